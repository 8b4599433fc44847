/**
 * `Idempotency-Key` across gateways. On one server the key is unique per tenant and function in its store; with
 * several gateways a client that retries through a load balancer may reach another gateway, which must not queue the
 * invocation a second time. So before a gateway stores an invocation with a key, it claims the key in the KV bucket
 * `KINDLING_IDEMPOTENCY` (create-if-absent, naming the invocation's id): of two gateways racing, one wins, and the other
 * answers with the winner's invocation. Claims expire with the invocations they name (the invocation retention).
 */
import { createHash } from 'node:crypto';
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { isWrongLastSequence } from './kv-errors.js';

export const DEFAULT_IDEMPOTENCY_BUCKET = 'KINDLING_IDEMPOTENCY';

export interface IdempotencyClaimsOptions {
  bucket?: string;
  replicas?: number;
  /** How long a claim holds: the invocation retention (default 7 days). */
  ttlMs?: number;
}

export class IdempotencyClaims {
  private constructor(private readonly kv: KV) {}

  static async open(nc: NatsConnection, options: IdempotencyClaimsOptions = {}): Promise<IdempotencyClaims> {
    const servers = Math.max(1, nc.info?.connect_urls?.length ?? 1);
    const kv = await new Kvm(jetstream(nc)).create(options.bucket ?? DEFAULT_IDEMPOTENCY_BUCKET, {
      ttl: options.ttlMs ?? 7 * 24 * 3600_000,
      history: 1,
      replicas: options.replicas ?? (servers >= 3 ? 3 : 1),
      max_bytes: 256 * 1024 * 1024,
      maxValueSize: 1024,
    });
    return new IdempotencyClaims(kv);
  }

  /** The id of the invocation that holds the tenant's key for the function: `id` when this claim won. */
  async claim(tenant: string, functionName: string, key: string, id: string): Promise<string> {
    const name = keyOf(tenant, functionName, key);
    try {
      for (;;) {
        try {
          await this.kv.create(name, JSON.stringify({ id }));
          return id;
        } catch (error) {
          if (!isWrongLastSequence(error)) throw error;
        }
        const holder = await this.kv.get(name);
        // Released between the two calls: claim it again.
        if (holder !== null && holder.operation === 'PUT') return holder.json<{ id: string }>().id;
      }
    } catch (error) {
      throw new KindlingError('CLUSTER_UNAVAILABLE', `an Idempotency-Key is claimed across gateways (NATS JetStream), which did not answer: ${error instanceof Error ? error.message : String(error)}; retry shortly`, { retryAfterSeconds: 1 });
    }
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
}

/** A key may hold any visible ASCII: its hash is the KV key's last token. */
function keyOf(tenant: string, functionName: string, key: string): string {
  return `${tenant}.${functionName}.${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
}
