/**
 * Tenant concurrency quotas across gateways: a tenant with `maxConcurrency: N` has N slots, `<tenant>.0` ..
 * `<tenant>.N-1`, as keys of the KV bucket `KINDLING_SLOTS`. A gateway takes a slot by creating its key (create-if-
 * absent: of two gateways racing for one slot, one gets it) and gives it back by deleting it (compare-and-set on its own
 * revision, so it never frees a slot another holder has since taken). So however many gateways take a tenant's
 * requests, no more than N of its executions run at once.
 *
 * A slot is a lease: the bucket's max age removes a key not written for `leaseMs`, and a holder rewrites its slots
 * every leaseMs/3 while their runs last, so the slots of a gateway that died come free within `leaseMs`. Each gateway
 * watches the bucket to try first the slots it believes free (one round trip when a slot is free, none to refuse).
 */
import { Kvm, type KV } from '@nats-io/kv';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { isWrongLastSequence } from './kv-errors.js';
import { defaultReplicas, clusterJetStream } from './connection.js';

export const DEFAULT_SLOTS_BUCKET = 'KINDLING_SLOTS';
export const TENANT_SLOTS_DEFAULTS = { leaseMs: 30_000 } as const;

export interface TenantSlotsOptions {
  bucket?: string;
  replicas?: number;
  /** A slot not rewritten for this long comes free (its holder died or lost NATS). Default 30 s. */
  leaseMs?: number;
  onError?: (error: unknown) => void;
  now?: () => number;
  /**
   * This gateway's node id: once it answers other gateways (announce), it says it is there with a key
   * `_presence.<nodeId>.<process>` (a lease like the slots'), so each gateway knows how many others share its
   * functions' limits and answer its questions (see othersCount). Absent: no presence is written.
   */
  nodeId?: string;
}

/**
 * The slots bucket (made if absent): keys expire leaseMs after their last write. Also holds gateways' presence and
 * their node ids' leases (gateway-lease.ts), under keys no tenant's slot can have.
 */
export async function openSlotsBucket(nc: NatsConnection, options: Pick<TenantSlotsOptions, 'bucket' | 'leaseMs' | 'replicas'> = {}): Promise<KV> {
  const leaseMs = options.leaseMs ?? TENANT_SLOTS_DEFAULTS.leaseMs;
  if (!Number.isInteger(leaseMs) || leaseMs < 1_000) throw new Error(`the slots' leaseMs must be a whole number >= 1000, got ${leaseMs}`);
  return new Kvm(clusterJetStream(nc)).create(options.bucket ?? DEFAULT_SLOTS_BUCKET, {
    ttl: leaseMs,
    history: 1,
    replicas: options.replicas ?? defaultReplicas(nc),
    // A few dozen bytes per running execution of a tenant with a quota.
    max_bytes: 256 * 1024 * 1024,
    maxValueSize: 1024,
  });
}

/** Presence keys of gateways (tenant names are lower-case letters, digits and dashes: no slot key starts so). */
const PRESENCE = '_presence';

interface Held {
  key: string;
  revision: number;
  /** A rewrite of its lease under way: a release waits for it (its delete needs the new revision). */
  refreshing: Promise<void> | null;
}

export class TenantSlots {
  /** Slots seen taken (key -> when last written, as seen here), from the watch. */
  private readonly seen = new Map<string, number>();
  /** The presence keys of `seen` (other gateways' and this one's): counted per call without a scan of every slot. */
  private readonly presences = new Map<string, number>();
  private readonly held = new Set<Held>();
  private readonly holder = nuid.next();
  private readonly refresher: NodeJS.Timeout;
  private stopWatch: () => void = () => {};
  /** Waits for a slot of a scope (see acquireWaiting), woken when the watch sees one of its slots given back. */
  private readonly wakers = new Map<string, Set<() => void>>();
  private presenceTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** One refresh pass at a time (a pass may take long while NATS is slow; two would race for the same revisions). */
  private refreshing = false;

  private constructor(
    private readonly kv: KV,
    private readonly leaseMs: number,
    private readonly options: TenantSlotsOptions,
  ) {
    this.refresher = setInterval(() => void this.refresh(), Math.max(100, Math.floor(leaseMs / 3)));
    this.refresher.unref();
  }

  static async open(nc: NatsConnection, options: TenantSlotsOptions = {}): Promise<TenantSlots> {
    const leaseMs = options.leaseMs ?? TENANT_SLOTS_DEFAULTS.leaseMs;
    const kv = await openSlotsBucket(nc, options);
    const slots = new TenantSlots(kv, leaseMs, options);
    await slots.watch();
    return slots;
  }

  /**
   * Takes one of the tenant's `max` slots, or throws 429 TENANT_CONCURRENCY_LIMIT (all taken, somewhere in the
   * cluster) or 503 CLUSTER_UNAVAILABLE (NATS could not answer). The function returned gives the slot back (once).
   */
  async acquire(tenant: string, max: number): Promise<() => void> {
    const release = await unavailableOnFailure("the tenant's concurrency quota", () => this.tryAcquire(tenant, max));
    if (release !== null) return release;
    throw new KindlingError('TENANT_CONCURRENCY_LIMIT', `tenant "${tenant}" already runs ${max} executions at once across the cluster (quota maxConcurrency); retry when one finished`, {
      retryAfterSeconds: 1,
      details: { maxConcurrency: max },
    });
  }

  /**
   * Takes one of `max` slots of `scope` (a function's: `fn.<tenant>.<name>`), waiting up to `waitMs` for one to be
   * given back anywhere in the cluster (the watch wakes the wait; it also looks again every 250 ms, for slots whose
   * lease ran out, which sends no event). Null when none came free in time or `signal` aborted; 503
   * CLUSTER_UNAVAILABLE when NATS could not answer.
   */
  async acquireWaiting(scope: string, max: number, options: { waitMs: number; signal?: AbortSignal }): Promise<(() => void) | null> {
    const deadline = this.now() + options.waitMs;
    for (;;) {
      // A caller gone (its client disconnected) takes no slot.
      if (options.signal?.aborted === true) return null;
      const release = await unavailableOnFailure("a function's maxConcurrency", () => this.tryAcquire(scope, max));
      if (release !== null) return release;
      const leftMs = deadline - this.now();
      if (leftMs <= 0) return null;
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', wake);
          this.wakers.get(scope)?.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(leftMs, 250));
        options.signal?.addEventListener('abort', wake, { once: true });
        let set = this.wakers.get(scope);
        if (set === undefined) this.wakers.set(scope, (set = new Set()));
        set.add(wake);
      });
      if (this.wakers.get(scope)?.size === 0) this.wakers.delete(scope);
    }
  }

  /** One of `max` slots of `scope` (`<scope>.0` .. `<scope>.max-1`): its release, or null when all are taken. */
  private async tryAcquire(scope: string, max: number): Promise<(() => void) | null> {
    const now = this.now();
    const free: number[] = [];
    const taken: number[] = [];
    for (let index = 0; index < max; index++) {
      const at = this.seen.get(`${scope}.${index}`);
      (at !== undefined && now - at < this.leaseMs ? taken : free).push(index);
    }
    // Free ones first, from a random start (gateways racing spread over them); then the ones seen taken, in case the
    // view is behind (a slot freed a moment ago).
    const offset = free.length === 0 ? 0 : Math.floor(Math.random() * free.length);
    const order = [...free.slice(offset), ...free.slice(0, offset), ...taken];
    for (const [tried, index] of order.entries()) {
      // Every slot seen taken and the free ones tried: refused without more round trips.
      if (tried >= free.length && tried > 0) break;
      const key = `${scope}.${index}`;
      const revision = await this.createOrNull(key);
      if (revision === null) continue;
      const held: Held = { key, revision, refreshing: null };
      this.held.add(held);
      this.seen.set(key, this.now());
      let released = false;
      return () => {
        if (released) return;
        released = true;
        this.held.delete(held);
        void (held.refreshing ?? Promise.resolve())
          .then(() => this.kv.delete(held.key, { previousSeq: held.revision }))
          .catch((error: unknown) => {
            // Already expired and taken by someone else (wrong last sequence), or NATS down: it expires by itself.
            if (!isWrongLastSequence(error)) this.options.onError?.(error);
          });
      };
    }
    return null;
  }

  /**
   * Whether another gateway said it is there within the lease: a function's limit is shared only then (a lone gateway's
   * own count is exact and costs no NATS round trip per call).
   */
  othersPresent(): boolean {
    return this.othersCount() > 0;
  }

  /** How many other gateway processes said they are there within the lease (two given one node id count as two). */
  othersCount(): number {
    const cutoff = this.now() - this.leaseMs;
    let count = 0;
    for (const [key, at] of this.presences) if (key !== this.presenceKey && at >= cutoff) count++;
    return count;
  }

  /**
   * Says this gateway is there, now and every leaseMs/3 on its own timer until close: call it once the gateway answers
   * the others' questions (a presence that cannot answer would make every question wait for it).
   */
  async announce(): Promise<void> {
    if (this.presenceKey === null || this.closed) return;
    // The timer first: a first write that fails is made again by it.
    this.presenceTimer ??= setInterval(() => {
      if (this.presenceKey !== null) void this.kv.put(this.presenceKey, JSON.stringify({ atMs: this.now() })).catch((error: unknown) => this.options.onError?.(error));
    }, Math.max(100, Math.floor(this.leaseMs / 3)));
    this.presenceTimer.unref();
    await this.kv.put(this.presenceKey, JSON.stringify({ atMs: this.now() }));
  }

  private get presenceKey(): string | null {
    return this.options.nodeId === undefined ? null : `${PRESENCE}.${this.options.nodeId}.${this.holder}`;
  }

  /** Slots held by this gateway now. */
  get heldCount(): number {
    return this.held.size;
  }

  /** Stops refreshing and watching; slots still held expire after the lease. */
  close(): void {
    this.closed = true;
    clearInterval(this.refresher);
    if (this.presenceTimer !== null) clearInterval(this.presenceTimer);
    this.stopWatch();
    // Gone at once for the others (else after the lease): a gateway left alone stops paying for shared limits.
    if (this.presenceKey !== null) void this.kv.delete(this.presenceKey).catch(() => undefined);
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  private async createOrNull(key: string): Promise<number | null> {
    try {
      return await this.kv.create(key, JSON.stringify({ holder: this.holder, atMs: this.now() }));
    } catch (error) {
      if (isWrongLastSequence(error)) return null;
      throw error;
    }
  }

  /** Rewrites each slot held (compare-and-set), so the lease does not end while its run lasts. */
  private async refresh(): Promise<void> {
    if (this.refreshing) return;
    this.refreshing = true;
    try {
      // Keys removed by the bucket's max age send no event: forget them here.
      const cutoff = this.now() - this.leaseMs;
      for (const [key, at] of this.seen) if (at < cutoff) this.seen.delete(key);
      for (const [key, at] of this.presences) if (at < cutoff) this.presences.delete(key);
      for (const held of [...this.held]) {
        held.refreshing = this.kv.update(held.key, JSON.stringify({ holder: this.holder, atMs: this.now() }), held.revision).then(
          (revision) => {
            held.revision = revision;
          },
          (error: unknown) => {
            // Lost (cut off past the lease, and someone took it): the run goes on, but the quota may be exceeded by one.
            this.options.onError?.(error);
            if (isWrongLastSequence(error)) this.held.delete(held);
          },
        );
        await held.refreshing;
        held.refreshing = null;
      }
    } finally {
      this.refreshing = false;
    }
  }

  private async watch(): Promise<void> {
    const iterator = await this.kv.watch();
    this.stopWatch = () => iterator.stop();
    void (async () => {
      for await (const entry of iterator) {
        const presence = entry.key.startsWith(`${PRESENCE}.`);
        if (entry.operation !== 'PUT') {
          this.seen.delete(entry.key);
          if (presence) this.presences.delete(entry.key);
          const waiting = this.wakers.get(entry.key.slice(0, entry.key.lastIndexOf('.')));
          if (waiting !== undefined) for (const wake of [...waiting]) wake();
        } else {
          const at = entry.isUpdate ? this.now() : Math.min(this.now(), entry.created.getTime());
          this.seen.set(entry.key, at);
          if (presence) this.presences.set(entry.key, at);
        }
      }
    })().catch((error: unknown) => this.options.onError?.(error));
  }
}

async function unavailableOnFailure<T>(what: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    throw new KindlingError('CLUSTER_UNAVAILABLE', `${what} is kept in the cluster (NATS JetStream), which did not answer: ${error instanceof Error ? error.message : String(error)}; retry shortly`, { retryAfterSeconds: 1 });
  }
}
