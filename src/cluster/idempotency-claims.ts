/**
 * `Idempotency-Key` across gateways. On one server the key is unique per tenant and function in its store; with
 * several gateways a client that retries through a load balancer may reach another gateway, which must not queue the
 * invocation a second time. So before a gateway stores an invocation with a key, it claims the key in the KV bucket
 * `KINDLING_IDEMPOTENCY` (create-if-absent, naming the invocation's id): of two gateways racing, one wins, and the other
 * answers with the winner's invocation. Claims expire with the invocations they name (the invocation retention).
 */
import { createHash } from 'node:crypto';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { isWrongLastSequence } from './kv-errors.js';
import { defaultReplicas, clusterJetStream } from './connection.js';

export const DEFAULT_IDEMPOTENCY_BUCKET = 'KINDLING_IDEMPOTENCY';

export interface IdempotencyClaimsOptions {
  bucket?: string;
  replicas?: number;
  /** How long a claim holds: the invocation retention (default 7 days). */
  ttlMs?: number;
  /** This gateway's node id, written with its claims (so that a claim whose invocation never got stored can be told). */
  nodeId?: string;
}

/** Who holds a key: the invocation's id, the gateway that claimed it (null for claims written before it was kept), the entry's revision. */
export interface IdempotencyClaim {
  id: string;
  nodeId: string | null;
  revision: number;
}

export class IdempotencyClaims {
  private constructor(
    private readonly kv: KV,
    private readonly nodeId: string | null,
  ) {}

  static async open(nc: NatsConnection, options: IdempotencyClaimsOptions = {}): Promise<IdempotencyClaims> {
    const kv = await new Kvm(clusterJetStream(nc)).create(options.bucket ?? DEFAULT_IDEMPOTENCY_BUCKET, {
      ttl: options.ttlMs ?? 7 * 24 * 3600_000,
      history: 1,
      replicas: options.replicas ?? defaultReplicas(nc),
      max_bytes: 256 * 1024 * 1024,
      maxValueSize: 1024,
    });
    return new IdempotencyClaims(kv, options.nodeId ?? null);
  }

  /** The claim that holds the tenant's key for the function: `id`'s own when this claim won. */
  async claim(tenant: string, functionName: string, key: string, id: string): Promise<IdempotencyClaim> {
    const name = keyOf(tenant, functionName, key);
    return unavailableOnFailure(async () => {
      for (;;) {
        try {
          return { id, nodeId: this.nodeId, revision: await this.kv.create(name, this.value(id)) };
        } catch (error) {
          if (!isWrongLastSequence(error)) throw error;
        }
        const holder = await this.kv.get(name);
        // Released between the two calls: claim it again.
        if (holder !== null && holder.operation === 'PUT') {
          const value = holder.json<{ id: string; nodeId?: string }>();
          return { id: value.id, nodeId: value.nodeId ?? null, revision: holder.revision };
        }
      }
    });
  }

  /**
   * Takes over a claim whose invocation was never stored (its gateway stopped between the claim and the store), by
   * compare-and-set on the revision read: false when the claim changed meanwhile (another gateway took it over first).
   */
  async takeOver(tenant: string, functionName: string, key: string, id: string, claim: IdempotencyClaim): Promise<boolean> {
    return unavailableOnFailure(async () => {
      try {
        await this.kv.update(keyOf(tenant, functionName, key), this.value(id), claim.revision);
        return true;
      } catch (error) {
        if (isWrongLastSequence(error)) return false;
        throw error;
      }
    });
  }

  /**
   * Makes a claim of `from` name `to`: this gateway's store answered the key with an older invocation of its own
   * (stored before the claims existed, e.g. when it was a single server), which is the one other gateways must find.
   */
  async repoint(tenant: string, functionName: string, key: string, from: string, to: string): Promise<void> {
    const name = keyOf(tenant, functionName, key);
    const holder = await this.kv.get(name);
    if (holder === null || holder.operation !== 'PUT' || holder.json<{ id: string }>().id !== from) return;
    await this.kv.update(name, this.value(to), holder.revision).catch((error: unknown) => {
      if (!isWrongLastSequence(error)) throw error;
    });
  }

  /** Gives up a claim whose invocation was not stored after all (only if `id` still holds it). */
  async release(tenant: string, functionName: string, key: string, id: string): Promise<void> {
    const name = keyOf(tenant, functionName, key);
    const holder = await this.kv.get(name);
    if (holder === null || holder.operation !== 'PUT' || holder.json<{ id: string }>().id !== id) return;
    await this.kv.delete(name, { previousSeq: holder.revision }).catch((error: unknown) => {
      if (!isWrongLastSequence(error)) throw error;
    });
  }

  private value(id: string): string {
    return JSON.stringify(this.nodeId === null ? { id } : { id, nodeId: this.nodeId });
  }
}

async function unavailableOnFailure<T>(body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    throw new KindlingError('CLUSTER_UNAVAILABLE', `an Idempotency-Key is claimed across gateways (NATS JetStream), which did not answer: ${error instanceof Error ? error.message : String(error)}; retry shortly`, { retryAfterSeconds: 1 });
  }
}

/** A key may hold any visible ASCII: its hash is the KV key's last token. */
function keyOf(tenant: string, functionName: string, key: string): string {
  return `${tenant}.${functionName}.${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
}
