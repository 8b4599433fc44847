/**
 * A gateway's hold on its node id, in the slots bucket (`_gateway.<nodeId>`, a lease like the slots': the bucket's max
 * age removes a key not rewritten). A gateway first asks whether a live gateway answers to its id (node.ts); two
 * started with one id in the same instant both get no answer. The lease settles it: the key is created if absent, so
 * of the two one takes it, and the other, hearing the key's holder answer for the id, is refused at start. A key left
 * by a gateway that died (its holder does not answer) is taken over by compare-and-set on its revision.
 *
 * The holder rewrites the key every lease/3 (compare-and-set on its own revision). A rewrite that finds the key
 * rewritten by another process (two that took it despite the above: a question that crossed the other's subscription
 * on its way through the NATS cluster) tells the holder it lost the id: it then says so on /readyz, as a worker whose
 * registry entry was overwritten does.
 */
import type { KV } from '@nats-io/kv';
import { isWrongLastSequence } from './kv-errors.js';

const PREFIX = '_gateway';

export interface GatewayIdentity {
  nodeId: string;
  /** This process (a nuid): two processes given one node id are told apart by it. */
  instance: string;
  startedAt: string;
}

export interface GatewayLeaseOptions {
  /** Rewrites every leaseMs/3 (the bucket's max age is leaseMs). */
  leaseMs: number;
  /** The instances of the live gateways that answer for the id, this process's own included (asked when the key exists). */
  answering: () => Promise<ReadonlySet<string>>;
  /** Another process rewrote the key: this one no longer holds the id. */
  onLost: (other: Partial<GatewayIdentity>) => void;
  onError?: (error: unknown) => void;
}

export class GatewayIdInUseError extends Error {}

export class GatewayLease {
  private revision: number;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  private lost = false;
  private refreshing: Promise<void> | null = null;

  private constructor(
    private readonly kv: KV,
    private readonly identity: GatewayIdentity,
    revision: number,
    private readonly options: GatewayLeaseOptions,
  ) {
    this.revision = revision;
    this.timer = setInterval(() => {
      this.refreshing ??= this.refresh().finally(() => (this.refreshing = null));
    }, Math.max(100, Math.floor(options.leaseMs / 3)));
    this.timer.unref();
  }

  /** Takes the id, or throws GatewayIdInUseError when a live gateway holds it. */
  static async take(kv: KV, identity: GatewayIdentity, options: GatewayLeaseOptions): Promise<GatewayLease> {
    const key = keyOf(identity.nodeId);
    const value = JSON.stringify(identity);
    try {
      return new GatewayLease(kv, identity, await kv.create(key, value), options);
    } catch (error) {
      if (!isWrongLastSequence(error)) throw error;
    }
    const entry = await kv.get(key);
    const holder = entry === null || entry.operation !== 'PUT' ? {} : parse(entry.string());
    // Refused only when the key's holder itself answers: two processes taking over a dead holder's id both answer,
    // and the compare-and-set below lets one of them have it (the other is told it was just taken).
    if (holder.instance !== undefined && (await options.answering()).has(holder.instance)) {
      throw new GatewayIdInUseError(`node id "${identity.nodeId}" is in use by a live gateway (started ${holder.startedAt ?? 'at an unknown time'}); give each node its own --node-name (default: the host name)`);
    }
    // Left by a gateway that is gone: taken over, unless another process takes it first.
    try {
      const revision = entry === null || entry.operation !== 'PUT' ? await kv.create(key, value) : await kv.update(key, value, entry.revision);
      return new GatewayLease(kv, identity, revision, options);
    } catch (error) {
      if (isWrongLastSequence(error)) throw new GatewayIdInUseError(`node id "${identity.nodeId}" was just taken by another gateway; give each node its own --node-name (default: the host name)`);
      throw error;
    }
  }

  /** Stops rewriting; the key goes at once (compare-and-set: never another holder's). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.refreshing?.catch(() => undefined);
    if (!this.lost) await this.kv.delete(keyOf(this.identity.nodeId), { previousSeq: this.revision }).catch(() => undefined);
  }

  private async refresh(): Promise<void> {
    if (this.closed || this.lost) return;
    const key = keyOf(this.identity.nodeId);
    const value = JSON.stringify(this.identity);
    try {
      this.revision = await this.kv.update(key, value, this.revision);
      return;
    } catch (error) {
      if (!isWrongLastSequence(error)) {
        // NATS did not answer: tried again at the next beat (the key lives for the whole lease).
        this.options.onError?.(error);
        return;
      }
    }
    try {
      const entry = await this.kv.get(key);
      const other = entry === null || entry.operation !== 'PUT' ? null : parse(entry.string());
      if (other === null) {
        // Gone with the bucket's max age (this gateway was cut off longer than the lease): taken back if still free.
        this.revision = await this.kv.create(key, value);
        return;
      }
      if (other.instance === this.identity.instance) {
        this.revision = entry!.revision;
        return;
      }
      this.lost = true;
      this.options.onLost(other);
    } catch (error) {
      if (isWrongLastSequence(error)) {
        this.lost = true;
        this.options.onLost({});
        return;
      }
      this.options.onError?.(error);
    }
  }
}

const keyOf = (nodeId: string): string => `${PREFIX}.${nodeId}`;

function parse(text: string): Partial<GatewayIdentity> {
  try {
    const value = JSON.parse(text) as Partial<GatewayIdentity>;
    return typeof value === 'object' && value !== null ? value : {};
  } catch {
    return {};
  }
}
