/**
 * The worker registry: every worker heartbeats its capacity, load and warm function versions into a KV bucket whose
 * entries expire (the bucket's max age: nats-server 2.9 has no per-key TTL), so a worker that dies without a word
 * disappears within the TTL. Gateways watch the bucket into an in-memory view and place work from it. A worker that
 * drains deletes its own key at once.
 */
import { type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { defaultReplicas, clusterJetStream, clusterJetStreamManager } from './connection.js';
import { isWrongLastSequence } from './kv-errors.js';

export const DEFAULT_REGISTRY_BUCKET = 'KINDLING_WORKERS';
export const REGISTRY_DEFAULTS = { ttlMs: 15_000 } as const;

export type NodeRole = 'worker' | 'all';

/** What a worker says about itself in each heartbeat. */
export interface WorkerState {
  nodeId: string;
  role: NodeRole;
  /** Executions it will run at once. */
  capacity: number;
  inFlight: number;
  /** Function versions with a warm sandbox, idle or busy (`<functionId>@<version>`). */
  warm: string[];
  startedAt: string;
}

export interface WorkerEntry extends WorkerState {
  heartbeatAt: string;
  /** Which process wrote it: two processes heartbeating one node id are told apart by it. */
  instance?: string;
}

export interface RegistryOptions {
  bucket?: string;
  /** A worker that has not heartbeaten for this long is gone. Default 15 s. */
  ttlMs?: number;
  replicas?: number;
}

export interface Heartbeat {
  /** This process's instance id, written with each beat. */
  readonly instance: string;
  /** Writes one heartbeat now (also done every ttl/3). */
  beat(): Promise<void>;
  /** Stops heartbeating; `deregister` (a drain) deletes the key at once, otherwise it expires after the TTL. */
  stop(options?: { deregister?: boolean }): Promise<void>;
}

export interface RegistryView {
  /** Workers heard from within the TTL, by node id. */
  workers(): WorkerEntry[];
  close(): void;
}

const NODE_ID = /^[A-Za-z0-9_-]{1,128}$/;

export class Registry {
  private constructor(
    private readonly kv: KV,
    private readonly jsm: JetStreamManager,
    private readonly bucket: string,
    readonly ttlMs: number,
  ) {}

  static async open(nc: NatsConnection, options: RegistryOptions = {}): Promise<Registry> {
    const ttlMs = options.ttlMs ?? REGISTRY_DEFAULTS.ttlMs;
    if (!Number.isInteger(ttlMs) || ttlMs < 1_000) throw new Error(`the registry's ttlMs must be a whole number >= 1000, got ${ttlMs}`);
    const bucket = options.bucket ?? DEFAULT_REGISTRY_BUCKET;
    const kv = await new Kvm(clusterJetStream(nc)).create(bucket, {
      ttl: ttlMs,
      history: 1,
      replicas: options.replicas ?? defaultReplicas(nc),
      // A few hundred bytes per worker; the bound stops a runaway writer, not a fleet.
      max_bytes: 64 * 1024 * 1024,
      maxValueSize: 256 * 1024,
    });
    // An existing bucket keeps its own max age: the view prunes with that, not with what was asked.
    const status = await kv.status();
    return new Registry(kv, await clusterJetStreamManager(nc), bucket, status.ttl > 0 ? status.ttl : ttlMs);
  }

  /** The registry of an existing bucket without creating it: null when there is none. */
  static async inspect(nc: NatsConnection, bucket = DEFAULT_REGISTRY_BUCKET): Promise<Registry | null> {
    const jsm = await clusterJetStreamManager(nc);
    if ((await jsm.streams.info(`KV_${bucket}`).catch(() => null)) === null) return null;
    const kv = await new Kvm(clusterJetStream(nc)).open(bucket);
    return new Registry(kv, jsm, bucket, (await kv.status()).ttl);
  }

  /**
   * Starts heartbeating `state()` every ttl/3 (the first beat is written before this resolves).
   *
   * Each beat after the first is a compare-and-set on the revision of the one before, so two processes that heartbeat
   * one node id notice it: the one whose write was overwritten by another instance stops beating and is told through
   * `onConflict` (an entry that expired or was deleted while this one was cut off is simply written again).
   */
  async heartbeat(
    state: () => WorkerState,
    options: { intervalMs?: number; instance?: string; onError?: (error: unknown) => void; onConflict?: (other: WorkerEntry) => void } = {},
  ): Promise<Heartbeat> {
    const first = state();
    if (!NODE_ID.test(first.nodeId)) throw new Error(`node id "${first.nodeId}" must be 1-128 of A-Z a-z 0-9 _ -`);
    const instance = options.instance ?? nuid.next();
    let revision = 0;
    let stopped = false;
    let conflicted = false;
    const beat = async (): Promise<void> => {
      if (conflicted) return;
      const value = JSON.stringify({ ...state(), heartbeatAt: new Date().toISOString(), instance } satisfies WorkerEntry);
      if (revision === 0) {
        revision = await this.kv.put(first.nodeId, value);
        return;
      }
      try {
        revision = await this.kv.update(first.nodeId, value, revision);
        return;
      } catch (error) {
        // Only a wrong last sequence means another writer; anything else (a timeout, a leader election) is retried by
        // the next beat with the same revision.
        if (!isWrongLastSequence(error)) throw error;
        // Read from the stream's leader: a direct get may be answered by a follower that has not seen the last write.
        const latest = await this.jsm.streams.getMessage(`KV_${this.bucket}`, { last_by_subj: `$KV.${this.bucket}.${first.nodeId}` });
        const operation = latest?.header?.get('KV-Operation') ?? '';
        if (latest === null || operation === 'DEL' || operation === 'PURGE') {
          // Expired (max age) or deleted while this worker could not write: it is this worker's again.
          revision = await this.kv.put(first.nodeId, value);
          return;
        }
        let other: WorkerEntry | null = null;
        try {
          other = latest.json<WorkerEntry>();
        } catch {
          // not a worker entry: someone else's write, treated as a conflict below
        }
        if (other?.instance === instance) {
          // This worker's own write whose acknowledgement was lost: carry on from its revision.
          revision = await this.kv.update(first.nodeId, value, latest.seq);
          return;
        }
        // Written by another process after this one's last beat: two processes share the id.
        if (latest.seq <= revision || conflicted) return;
        conflicted = true;
        stopped = true;
        clearInterval(timer);
        options.onConflict?.(other ?? { ...first, heartbeatAt: latest.time.toISOString() });
        if (options.onConflict === undefined) throw error;
      }
    };
    await beat();
    let pending: Promise<void> = Promise.resolve();
    const timer = setInterval(() => {
      // One beat at a time: a slow NATS must not pile them up.
      pending = pending.then(() => (stopped ? undefined : beat().catch((error: unknown) => options.onError?.(error))));
    }, options.intervalMs ?? Math.floor(this.ttlMs / 3));
    return {
      instance,
      beat,
      stop: async ({ deregister = false } = {}) => {
        stopped = true;
        clearInterval(timer);
        await pending;
        // A worker that lost its id to another process leaves that one's entry alone.
        if (deregister && !conflicted) await this.kv.delete(first.nodeId);
      },
    };
  }

  /** Every live entry, read once (for `kindling cluster status`). */
  async list(): Promise<WorkerEntry[]> {
    // The keys from the stream's subjects, not kv.keys(): that one iterates a consumer, and while workers heartbeat it
    // can yield a key twice.
    const prefix = `$KV.${this.bucket}.`;
    const info = await this.jsm.streams.info(`KV_${this.bucket}`, { subjects_filter: `${prefix}>` });
    const keys = Object.keys(info.state.subjects ?? {}).map((subject) => subject.slice(prefix.length));
    const entries = await Promise.all(keys.map((key) => this.kv.get(key)));
    return entries
      .flatMap((entry) => {
        if (entry === null || entry.operation !== 'PUT') return [];
        try {
          return [entry.json<WorkerEntry>()];
        } catch {
          return []; // not a worker entry (someone else's write): left out, as the watcher does
        }
      })
      .sort((a, b) => a.nodeId.localeCompare(b.nodeId));
  }

  /**
   * A watcher that keeps an in-memory view. Expiry by max age sends no event, so the view also drops entries not
   * heard from within the TTL; it counts from the time an update arrived here (no clock skew between machines), or,
   * for the entries present when the watch starts, from when the server stored them.
   */
  async watch(now: () => number = Date.now, onError: (error: unknown) => void = () => {}): Promise<RegistryView> {
    const seen = new Map<string, { entry: WorkerEntry; at: number }>();
    const iterator = await this.kv.watch();
    // A watch that fails ends the updates (the view then empties as entries age past the TTL); it must not become an
    // unhandled rejection that takes the process down.
    void (async () => {
      for await (const entry of iterator) {
        if (entry.operation !== 'PUT') {
          seen.delete(entry.key);
          continue;
        }
        try {
          seen.set(entry.key, { entry: entry.json<WorkerEntry>(), at: entry.isUpdate ? now() : Math.min(now(), entry.created.getTime()) });
        } catch {
          // Not a worker entry (someone else's write): leave it out of the view.
        }
      }
    })().catch(onError);
    return {
      workers: () => {
        const cutoff = now() - this.ttlMs;
        for (const [key, value] of seen) if (value.at < cutoff) seen.delete(key);
        return [...seen.values()].map((value) => value.entry).sort((a, b) => a.nodeId.localeCompare(b.nodeId));
      },
      close: () => iterator.stop(),
    };
  }
}
