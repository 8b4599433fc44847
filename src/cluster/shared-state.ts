/**
 * The control state every gateway of a cluster shares: tenants, API keys (their hashes) and functions with their
 * versions, in one JetStream KV bucket (`KINDLING_STATE`, replicated R3 on a 3-node NATS cluster).
 *
 * Each gateway watches the bucket and applies every entry, in the stream's order, to its own SQLite stores, which stay
 * what it reads: auth and function lookups remain local and synchronous, and since all gateways apply the same entries
 * in the same order they hold the same state. A write goes to the bucket first (compare-and-set where two gateways
 * could race) and resolves once this gateway has applied it, so a caller reads its own writes; the other gateways apply
 * it as their watch delivers it (within milliseconds on a healthy cluster).
 *
 * Keys: `t.<tenant>`, `k.<tenant>.<keyId>`, `f.<tenant>.<function>`, `v.<tenant>.<function>.<version>`, `g.<node>`
 * (a gateway's HTTP address, which other gateways forward reads to), and `s.<id>` (the seed marker, and barriers: a
 * write whose revision follows deletes, which return none).
 */
import { type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { isWrongLastSequence } from './kv-errors.js';
import type { FunctionRecord, FunctionSpec, FunctionVersion, VersionRetention } from '../store/store.js';
import type { SqliteStore } from '../store/sqlite.js';
import type { ApiKeyRecord, SqliteTenantStore, TenantQuotas, TenantRecord } from '../store/tenants-sqlite.js';
import type { FunctionWrites, TenantWrites } from '../store/writes.js';
import { defaultReplicas, clusterJetStream, clusterJetStreamManager } from './connection.js';

export const DEFAULT_STATE_BUCKET = 'KINDLING_STATE';

export interface SharedStateOptions {
  /** This gateway's node id (the first gateway's marks the copy of its state it makes). */
  nodeId?: string;
  bucket?: string;
  replicas?: number;
  /** The bucket's bound on disk (each replica). Default 1 GiB: versions' code, tenants and key hashes. */
  maxBytes?: number;
  /** How long a write waits for this gateway to apply it, and a start for the bucket's contents. Default 15 s. */
  applyTimeoutMs?: number;
  /**
   * Called after each entry another process wrote was applied here (caches to refresh, pools to close); an entry of
   * this process that arrives before its write's answer is told too, so handlers must be idempotent.
   */
  onChange?: (change: SharedStateChange) => void;
  onError?: (error: unknown) => void;
  /** How often versions kept past their deletion (see `retained`) are checked again. Default 10 s. */
  retainedCheckMs?: number;
  /** Versions this gateway's invocations being accepted now (not stored yet) refer to: kept like stored ones. */
  inUse?: (tenant: string, name: string, version: number) => boolean;
}

export type SharedStateChange =
  | { kind: 'tenant'; tenant: string; deleted: boolean }
  | { kind: 'key'; tenant: string }
  | { kind: 'function'; tenant: string; name: string; deleted: boolean };

/** What the bucket held when this gateway joined, and what it did with its own state. */
export interface JoinReport {
  /** This gateway's stores were the first in the cluster: they were copied into the bucket. */
  seeded: boolean;
  tenants: number;
  keys: number;
  functions: number;
  versions: number;
}

const SEED_KEY = 's.seeded';

export class SharedState implements TenantWrites, FunctionWrites {
  private applied = 0;
  private readonly waiters = new Set<{ revision: number; resolve: () => void; reject: (error: Error) => void }>();
  /** Gateways' HTTP addresses by node id, as they registered them. */
  private readonly gateways = new Map<string, string>();
  /** Revisions this process wrote: their changes are already handled by the writer (no onChange). */
  private readonly own = new Set<number>();
  private readonly instance = nuid.next();
  private stopWatch: (() => void) | null = null;
  /**
   * Versions another gateway deleted (its deploy pruned them) that this gateway's queued or running invocations still
   * need: kept in this copy until they are done, then removed (each gateway knows only its own invocations).
   */
  private readonly retained = new Map<string, { tenant: string; name: string; version: number }>();
  private retainedTimer: NodeJS.Timeout | null = null;
  /**
   * Functions whose versions are being read again from the bucket (see repair), with the revisions the stream applied
   * meanwhile: of the record, and of each version's key.
   */
  private readonly repairing = new Map<string, { record: number; versions: Map<number, number>; attempt: number }>();

  private constructor(
    private readonly kv: KV,
    private readonly jsm: JetStreamManager,
    private readonly bucket: string,
    private readonly tenants: SqliteTenantStore,
    private readonly functions: SqliteStore,
    /** The largest value NATS takes in one message (its max_payload less room for headers). */
    private readonly maxValueBytes: number,
    private readonly options: SharedStateOptions,
  ) {}

  /**
   * Opens (or creates) the bucket and makes the local stores a copy of it before resolving. The first gateway of a
   * cluster (an empty bucket) copies its own tenants, keys and functions into it, so a single server turned gateway
   * keeps its state; any later gateway's own state is replaced by the cluster's.
   */
  static async join(nc: NatsConnection, stores: { tenants: SqliteTenantStore; functions: SqliteStore }, options: SharedStateOptions = {}): Promise<{ state: SharedState; report: JoinReport }> {
    const bucket = options.bucket ?? DEFAULT_STATE_BUCKET;
    const maxValueBytes = (nc.info?.max_payload ?? 1024 * 1024) - 4 * 1024;
    const kv = await new Kvm(clusterJetStream(nc)).create(bucket, {
      history: 1,
      replicas: options.replicas ?? defaultReplicas(nc),
      // Functions' code is in their versions (inline code up to the deploy limit; bundles are files on the gateway).
      max_bytes: options.maxBytes ?? 1024 ** 3,
      maxValueSize: maxValueBytes,
    });
    const state = new SharedState(kv, await clusterJetStreamManager(nc), bucket, stores.tenants, stores.functions, maxValueBytes, options);
    const seeded = await state.seedIfFirst();
    // Every server has the default tenant (the admin key acts as it): the first gateway's copy may lack it.
    await state.createOrNull('t.default', { name: 'default', quotas: {}, createdAtMs: Date.now(), deletedAtMs: null } satisfies TenantRecord);
    const report = await state.follow();
    return { state, report: { ...report, seeded } };
  }

  /** Stops following the bucket (the stores keep what they have); writes still waiting to be seen back fail. */
  close(): void {
    this.stopWatch?.();
    this.stopWatch = null;
    if (this.retainedTimer !== null) clearInterval(this.retainedTimer);
    this.retainedTimer = null;
    for (const waiter of [...this.waiters]) waiter.reject(new Error('the shared state was closed before the change was seen back'));
    this.waiters.clear();
  }

  /** Records where this gateway's API is reached (other gateways forward reads of invocations it holds there). */
  async registerGateway(nodeId: string, url: string): Promise<void> {
    await this.write(async () => ({ result: undefined, revision: await this.kv.put(`g.${nodeId}`, JSON.stringify({ url })) }));
  }

  /** The HTTP address a gateway registered, or undefined. */
  gatewayUrl(nodeId: string): string | undefined {
    return this.gateways.get(nodeId);
  }

  /* ---------------------------------------------------- tenants ------------------------------------------------- */

  async insertTenant(name: string, quotas: TenantQuotas, nowMs: number): Promise<boolean> {
    return this.write(async () => {
      const record: TenantRecord = { name, quotas, createdAtMs: nowMs, deletedAtMs: null };
      const revision = await this.createOrNull(`t.${name}`, record);
      if (revision !== null) return { result: true, revision };
      // Taken (maybe a moment ago through another gateway): the caller reads it once this copy has it.
      const existing = await this.kv.get(`t.${name}`);
      return existing === null ? { result: false } : { result: false, revision: existing.revision };
    });
  }

  async updateQuotas(name: string, change: (current: TenantQuotas) => TenantQuotas): Promise<TenantQuotas | null> {
    let written: TenantQuotas | null = null;
    // `change` runs inside the compare-and-set loop, on the record read each time: a conflicting update is merged, not lost.
    const updated = await this.updateRecord<TenantRecord>(`t.${name}`, (record) => {
      if (record.deletedAtMs !== null) return null;
      written = change(record.quotas);
      return { ...record, quotas: written };
    });
    return updated ? written : null;
  }

  async deleteTenant(name: string, nowMs: number): Promise<boolean> {
    return this.updateRecord<TenantRecord>(`t.${name}`, (record) => (record.deletedAtMs === null ? { ...record, deletedAtMs: nowMs } : null));
  }

  async insertKey(key: Omit<ApiKeyRecord, 'revokedAtMs'>): Promise<void> {
    await this.write(async () => {
      const revision = await this.createOrNull(`k.${key.tenant}.${key.id}`, { ...key, revokedAtMs: null } satisfies ApiKeyRecord);
      if (revision === null) throw new Error(`key id ${key.id} exists already`);
      return { result: undefined, revision };
    });
  }

  async revokeKey(tenant: string, id: string, nowMs: number): Promise<boolean> {
    if (!/^[A-Za-z0-9_-]+$/.test(id)) return false;
    return this.updateRecord<ApiKeyRecord>(`k.${tenant}.${id}`, (record) => (record.revokedAtMs === null ? { ...record, revokedAtMs: nowMs } : null));
  }

  /* --------------------------------------------------- functions ------------------------------------------------ */

  async putFunction(tenant: string, name: string, spec: FunctionSpec, nowMs: number, retention?: VersionRetention): Promise<{ fn: FunctionRecord; version: FunctionVersion; created: boolean; pruned: number[] }> {
    return this.write(async () => {
      const fnKey = `f.${tenant}.${name}`;
      const before = live(await this.kv.get(fnKey));
      // The number: a version key is created, never overwritten, so of two deploys racing for a number one gets it and
      // the other takes the next. Numbers are never reused while the function exists.
      let number = Math.max(before?.json<FunctionRecord>().latestVersion ?? 0, this.functions.maxVersion(tenant, name)) + 1;
      const version: FunctionVersion = { tenant, name, version: number, spec, createdAtMs: nowMs };
      const bytes = Buffer.byteLength(JSON.stringify(version));
      if (bytes > this.maxValueBytes) {
        throw new KindlingError('PAYLOAD_TOO_LARGE', `the function's version is ${bytes} bytes, more than one NATS message takes (${this.maxValueBytes}); deploy its code as a bundle, or raise max_payload in nats-server's configuration`, {
          details: { bytes, maxBytes: this.maxValueBytes },
        });
      }
      for (;;) {
        version.version = number;
        if ((await this.createOrNull(`v.${tenant}.${name}.${number}`, version)) !== null) break;
        number++;
      }
      // Then the function's record (compare-and-set): the latest is the highest number stored, whoever stored it.
      let revision = 0;
      let created = false;
      for (;;) {
        const current = await this.kv.get(fnKey);
        const record = live(current)?.json<FunctionRecord>() ?? null;
        created = record === null;
        const next: FunctionRecord = {
          tenant,
          name,
          latestVersion: Math.max(number, record?.latestVersion ?? 0),
          createdAtMs: record?.createdAtMs ?? nowMs,
          updatedAtMs: nowMs,
        };
        const written = await this.casOrNull(fnKey, next, current);
        if (written !== null) {
          revision = written;
          break;
        }
      }
      this.markOwn(revision);
      await this.appliedUpTo(revision);
      const pruned = retention === undefined ? [] : await this.prune(tenant, name, number, retention);
      return { result: { fn: this.functions.getFunction(tenant, name) ?? { tenant, name, latestVersion: number, createdAtMs: nowMs, updatedAtMs: nowMs }, version, created, pruned } };
    });
  }

  async deleteFunction(tenant: string, name: string): Promise<boolean> {
    return this.write(async () => {
      const existed = live(await this.kv.get(`f.${tenant}.${name}`)) !== null;
      await this.removeFunctionKeys(tenant, name);
      return { result: existed, revision: await this.barrier() };
    });
  }

  async deleteTenantFunctions(tenant: string): Promise<string[]> {
    return this.write(async () => {
      const names = new Set<string>();
      for await (const key of await this.kv.keys(`f.${tenant}.*`)) names.add(key.split('.')[2]!);
      const deleted: string[] = [];
      for (const name of names) {
        if (live(await this.kv.get(`f.${tenant}.${name}`)) === null) continue;
        await this.removeFunctionKeys(tenant, name);
        deleted.push(name);
      }
      return { result: deleted.sort(), revision: await this.barrier() };
    });
  }

  /* ---------------------------------------------------- inside -------------------------------------------------- */

  /**
   * Versions beyond the retention, as putFunction does: not among the newest `keep`, not in `alsoKeep`, not one a
   * queued or running invocation of this gateway refers to.
   */
  private async prune(tenant: string, name: string, number: number, retention: VersionRetention): Promise<number[]> {
    // prunableVersions answers "before a deploy": one more than `keep` keeps the newest `keep` of those stored now.
    const doomed = this.functions
      .prunableVersions(tenant, name, Math.max(1, retention.keep) + 1, [number, ...(retention.alsoKeep ?? [])])
      .map((row) => row.version);
    for (const v of doomed) await this.kv.delete(`v.${tenant}.${name}.${v}`);
    if (doomed.length > 0) await this.appliedUpTo(await this.barrier());
    return doomed.sort((a, b) => a - b);
  }

  /** The versions first (a function is not seen without its code), then the record. */
  private async removeFunctionKeys(tenant: string, name: string): Promise<void> {
    const versionKeys: string[] = [];
    for await (const key of await this.kv.keys(`v.${tenant}.${name}.*`)) versionKeys.push(key);
    for (const key of versionKeys) await this.kv.delete(key);
    await this.kv.delete(`f.${tenant}.${name}`);
  }

  /** A write whose revision follows the deletes before it (a delete returns none): wait for it to know they applied. */
  private async barrier(): Promise<number> {
    const revision = await this.kv.put(`s.${this.instance}`, JSON.stringify({ atMs: Date.now() }));
    this.markOwn(revision);
    return revision;
  }

  private async updateRecord<T>(key: string, change: (record: T) => T | null): Promise<boolean> {
    return this.write(async () => {
      for (;;) {
        const current = await this.kv.get(key);
        const record = live(current)?.json<T>() ?? null;
        const next = record === null ? null : change(record);
        if (next === null) return { result: false };
        const revision = await this.casOrNull(key, next, current);
        if (revision !== null) return { result: true, revision };
      }
    });
  }

  /**
   * Runs a write against the bucket, then waits until this gateway applied its revision (if it made one). NATS
   * failures become 503 CLUSTER_UNAVAILABLE: the write may or may not have been stored, as with any lost answer.
   */
  private async write<T>(body: () => Promise<{ result: T; revision?: number }>): Promise<T> {
    try {
      const { result, revision } = await body();
      if (revision !== undefined) {
        this.markOwn(revision);
        await this.appliedUpTo(revision);
      }
      return result;
    } catch (error) {
      if (error instanceof KindlingError) throw error;
      throw new KindlingError('CLUSTER_UNAVAILABLE', `the cluster's shared state (NATS JetStream) did not take the change: ${error instanceof Error ? error.message : String(error)}; retry shortly`, { retryAfterSeconds: 1 });
    }
  }

  private async createOrNull(key: string, value: unknown): Promise<number | null> {
    try {
      return await this.kv.create(key, JSON.stringify(value));
    } catch (error) {
      if (isWrongLastSequence(error)) return null;
      throw error;
    }
  }

  /** Compare-and-set against `current` (absent or deleted: create); null when another write came first. */
  private async casOrNull(key: string, value: unknown, current: KvEntry | null): Promise<number | null> {
    try {
      return current === null ? await this.kv.create(key, JSON.stringify(value)) : await this.kv.update(key, JSON.stringify(value), current.revision);
    } catch (error) {
      if (isWrongLastSequence(error)) return null;
      throw error;
    }
  }

  /** The watch may deliver a write before its ack arrives: then it was told as another's change, which is harmless. */
  private markOwn(revision: number): void {
    if (revision > this.applied) this.own.add(revision);
  }

  private appliedUpTo(revision: number): Promise<void> {
    if (this.applied >= revision) return Promise.resolve();
    const timeoutMs = this.options.applyTimeoutMs ?? 15_000;
    return new Promise((resolve, reject) => {
      const waiter = {
        revision,
        resolve: () => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          resolve();
        },
        reject: (error: Error) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`the change (revision ${revision}) was stored but not seen back within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  /**
   * The first gateway of a cluster copies its stores into an empty bucket. A marker key decides who is first and says
   * whether the copy is complete: a copy that failed half-way is done again by the same node's next start, and other
   * gateways wait for it (a gateway must never take a half-copied state as the cluster's, which would drop the rest).
   */
  private async seedIfFirst(): Promise<boolean> {
    const nodeId = this.options.nodeId ?? '';
    const marker = await this.kv.get(SEED_KEY);
    if (marker !== null && marker.operation === 'PUT') {
      const seed = marker.json<{ complete?: boolean; nodeId?: string }>();
      if (seed.complete !== false) return false;
      if (seed.nodeId === nodeId && nodeId !== '') return this.seed(marker.revision);
      await this.seeded();
      return false;
    }
    if ((await this.jsm.streams.info(`KV_${this.bucket}`)).state.messages > 0) return false;
    const revision = await this.createOrNull(SEED_KEY, { complete: false, nodeId, atMs: Date.now() });
    if (revision === null) {
      await this.seeded();
      return false;
    }
    return this.seed(revision);
  }

  private async seed(markerRevision: number): Promise<boolean> {
    const put = async (key: string, value: unknown): Promise<void> => {
      try {
        await this.kv.put(key, JSON.stringify(value));
      } catch (error) {
        throw new Error(`copying this server's tenants, keys and functions into the cluster failed at ${key} (${error instanceof Error ? error.message : String(error)}); fix that and start it again: the copy starts over`, { cause: error });
      }
    };
    for (const tenant of this.tenants.listTenants()) {
      await put(`t.${tenant.name}`, tenant);
      for (const key of this.tenants.listKeys(tenant.name)) await put(`k.${key.tenant}.${key.id}`, key);
    }
    for (const fn of this.functions.allFunctions()) {
      for (const version of this.functions.listVersions(fn.tenant, fn.name)) await put(`v.${fn.tenant}.${fn.name}.${version.version}`, version);
      await put(`f.${fn.tenant}.${fn.name}`, fn);
    }
    await this.kv.update(SEED_KEY, JSON.stringify({ complete: true, nodeId: this.options.nodeId ?? '', atMs: Date.now() }), markerRevision);
    return true;
  }

  /** Waits (up to a minute) until the first gateway's copy is complete. */
  private async seeded(): Promise<void> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const marker = await this.kv.get(SEED_KEY);
      if (marker === null || marker.operation !== 'PUT' || marker.json<{ complete?: boolean }>().complete !== false) return;
      if (Date.now() > deadline) {
        throw new Error(`the first gateway (${marker.json<{ nodeId?: string }>().nodeId ?? 'unknown'}) has not finished copying its state into the cluster; start it again (it resumes), then this one`);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /**
   * Reads the bucket's contents into the stores (replacing what they held), then applies each later entry as it comes.
   * Resolves once the contents are applied.
   */
  private async follow(): Promise<Omit<JoinReport, 'seeded'>> {
    const lastAtStart = (await this.jsm.streams.info(`KV_${this.bucket}`)).state.last_seq;
    const iterator = await this.kv.watch();
    const initial: KvEntry[] = [];
    let caughtUp: () => void = () => {};
    const ready = new Promise<void>((resolve) => (caughtUp = resolve));
    let report: Omit<JoinReport, 'seeded'> = { tenants: 0, keys: 0, functions: 0, versions: 0 };
    let started = lastAtStart === 0;
    if (started) {
      report = this.replaceAll([]);
      caughtUp();
    }
    let stopped = false;
    this.stopWatch = () => {
      stopped = true;
      iterator.stop();
    };
    const pump = async (entries: AsyncIterable<KvEntry>): Promise<void> => {
      try {
        for await (const entry of entries) {
          if (!started) {
            initial.push(entry);
            if (entry.revision < lastAtStart) continue;
            started = true;
            report = this.replaceAll(initial);
            this.advance(entry.revision);
            caughtUp();
            continue;
          }
          try {
            this.apply(entry);
          } catch (error) {
            this.options.onError?.(error);
          }
          this.advance(entry.revision);
        }
      } catch (error) {
        this.options.onError?.(error);
      }
      // A watch that ended by itself (not closed here) would leave this copy stale for good, revoked keys included:
      // it starts again after the last revision applied, until it holds.
      while (!stopped && started) {
        this.options.onError?.(new Error(`the watch of ${this.bucket} ended; following it again from revision ${this.applied + 1}`));
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        if (stopped) return;
        try {
          const next = await this.kv.watch({ resumeFromRevision: this.applied + 1 });
          this.stopWatch = () => {
            stopped = true;
            next.stop();
          };
          return await pump(next);
        } catch (error) {
          this.options.onError?.(error);
        }
      }
    };
    void pump(iterator);
    const timeoutMs = this.options.applyTimeoutMs ?? 15_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ready,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the cluster's shared state (${this.bucket}) was not read within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } catch (error) {
      this.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return report;
  }

  private advance(revision: number): void {
    this.applied = Math.max(this.applied, revision);
    for (const waiter of [...this.waiters]) if (waiter.revision <= this.applied) waiter.resolve();
  }

  private replaceAll(entries: readonly KvEntry[]): Omit<JoinReport, 'seeded'> {
    const tenants: TenantRecord[] = [];
    const keys: ApiKeyRecord[] = [];
    const functions: FunctionRecord[] = [];
    const versions: FunctionVersion[] = [];
    for (const entry of entries) {
      if (entry.operation !== 'PUT') continue;
      const kind = entry.key.split('.')[0];
      if (kind === 'g') this.gateways.set(entry.key.slice(2), entry.json<{ url: string }>().url);
      else if (kind === 't') tenants.push(entry.json<TenantRecord>());
      else if (kind === 'k') keys.push(entry.json<ApiKeyRecord>());
      else if (kind === 'f') functions.push(entry.json<FunctionRecord>());
      else if (kind === 'v') versions.push(entry.json<FunctionVersion>());
    }
    this.tenants.replaceAll(tenants, keys);
    // Versions the cluster pruned while this gateway's queued invocations need them stay until those are done.
    for (const version of this.functions.replaceFunctions(functions, versions)) this.retain(version.tenant, version.name, version.version);
    return { tenants: tenants.length, keys: keys.length, functions: functions.length, versions: versions.length };
  }

  private inUse(tenant: string, name: string, version: number): boolean {
    return this.functions.versionInUse(tenant, name, version) || (this.options.inUse?.(tenant, name, version) ?? false);
  }

  private retain(tenant: string, name: string, version: number): void {
    this.retained.set(`${tenant}.${name}.${version}`, { tenant, name, version });
    this.retainedTimer ??= setInterval(() => this.removeRetained(), this.options.retainedCheckMs ?? 10_000);
    this.retainedTimer.unref();
  }

  /** Removes the retained versions no invocation of this gateway needs any more. */
  private removeRetained(): void {
    try {
      for (const [key, kept] of this.retained) {
        if (this.inUse(kept.tenant, kept.name, kept.version)) continue;
        this.functions.removeVersion(kept.tenant, kept.name, kept.version);
        this.retained.delete(key);
      }
    } catch (error) {
      this.options.onError?.(error);
    }
    if (this.retained.size === 0 && this.retainedTimer !== null) {
      clearInterval(this.retainedTimer);
      this.retainedTimer = null;
    }
  }

  /**
   * Reads a function's record and versions again from the bucket's stream leader (a replica may be behind), then
   * applies them in one step, leaving out what the stream changed meanwhile (a record or version written or deleted
   * after the read is newer: the stream's stands). Tried again (up to 5 times, backing off) while the copy still has
   * the record without its version.
   */
  private repair(tenant: string, name: string, revision: number, attempt = 0): void {
    const functionKey = `${tenant}.${name}`;
    if (this.repairing.has(functionKey) || this.stopWatch === null) return;
    const state = { record: revision, versions: new Map<number, number>(), attempt };
    this.repairing.set(functionKey, state);
    void (async () => {
      try {
        const record = await this.leaderGet(`f.${tenant}.${name}`);
        const versions: { revision: number; version: FunctionVersion }[] = [];
        if (record !== null) {
          for await (const key of await this.kv.keys(`v.${tenant}.${name}.*`)) {
            const entry = await this.leaderGet(key);
            if (entry !== null) versions.push({ revision: entry.revision, version: entry.json<FunctionVersion>() });
          }
        }
        // No await from here on: what the stream applied meanwhile is in `state`.
        if (record !== null && record.revision >= state.record) {
          for (const { revision: at, version } of versions) if (at >= (state.versions.get(version.version) ?? 0)) this.functions.applyVersion(version);
          this.functions.applyFunction(record.json<FunctionRecord>());
        }
        this.options.onChange?.({ kind: 'function', tenant, name, deleted: this.functions.getVersion(tenant, name) === null });
      } catch (error) {
        this.options.onError?.(error);
      } finally {
        this.repairing.delete(functionKey);
      }
      // Still a record without its version here (a failure, or the stream moved on while this read): again, later.
      if (this.functions.getFunction(tenant, name) !== null && this.functions.getVersion(tenant, name) === null && attempt < 4) {
        setTimeout(() => this.repair(tenant, name, state.record, attempt + 1), 250 * 2 ** attempt).unref();
      }
    })();
  }

  /** A key's last entry as the stream's leader has it (null: absent, deleted or purged). */
  private async leaderGet(key: string): Promise<{ revision: number; json: <T>() => T } | null> {
    const message = await this.jsm.streams.getMessage(`KV_${this.bucket}`, { last_by_subj: `$KV.${this.bucket}.${key}` }).catch((error: unknown) => {
      if (error instanceof Error && /no message found/i.test(error.message)) return null;
      throw error;
    });
    if (message === null) return null;
    const operation = message.header?.get('KV-Operation') ?? '';
    if (operation === 'DEL' || operation === 'PURGE') return null;
    return { revision: message.seq, json: <T>() => message.json<T>() };
  }

  /** One entry, as the stream ordered it. */
  private apply(entry: KvEntry): void {
    const parts = entry.key.split('.');
    const removed = entry.operation !== 'PUT';
    const mine = this.own.delete(entry.revision);
    const tell = (change: SharedStateChange): void => {
      if (!mine) this.options.onChange?.(change);
    };
    switch (parts[0]) {
      case 't': {
        if (removed) return; // tenants are marked deleted, never removed
        const record = entry.json<TenantRecord>();
        this.tenants.applyTenant(record);
        tell({ kind: 'tenant', tenant: record.name, deleted: record.deletedAtMs !== null });
        return;
      }
      case 'k': {
        if (removed) return;
        const record = entry.json<ApiKeyRecord>();
        this.tenants.applyKey(record);
        tell({ kind: 'key', tenant: record.tenant });
        return;
      }
      case 'f': {
        const [, tenant = '', name = ''] = parts;
        const repairing = this.repairing.get(`${tenant}.${name}`);
        if (repairing !== undefined) repairing.record = entry.revision;
        if (removed) {
          // Its versions went before it; deleting the row removes any a racing deploy left.
          this.functions.deleteFunction(tenant, name);
          for (const [key, kept] of this.retained) if (kept.tenant === tenant && kept.name === name) this.retained.delete(key);
          tell({ kind: 'function', tenant, name, deleted: true });
          return;
        }
        this.functions.applyFunction(entry.json<FunctionRecord>());
        // A deploy through one gateway racing a delete through another: the delete's removal of the record took this
        // copy's rows of the deploy's version with it, then the deploy's record came. The bucket still has the version.
        if (this.functions.getVersion(tenant, name) === null) this.repair(tenant, name, entry.revision);
        tell({ kind: 'function', tenant, name, deleted: false });
        return;
      }
      case 'v': {
        const [, tenant = '', name = '', version = '0'] = parts;
        const number = Number(version);
        const key = `${tenant}.${name}.${number}`;
        this.repairing.get(`${tenant}.${name}`)?.versions.set(number, entry.revision);
        if (!removed) {
          this.retained.delete(key);
          this.functions.applyVersion(entry.json<FunctionVersion>());
        } else if (this.inUse(tenant, name, number)) {
          // Pruned by a deploy elsewhere, but an invocation queued or running here needs it: removed once it is done.
          this.retain(tenant, name, number);
        } else {
          this.functions.removeVersion(tenant, name, number);
        }
        return;
      }
      case 'g': {
        const nodeId = entry.key.slice(2);
        if (removed) this.gateways.delete(nodeId);
        else this.gateways.set(nodeId, entry.json<{ url: string }>().url);
        return;
      }
      default:
        return; // barriers and the seed marker
    }
  }
}

/** The entry when it holds a value (not absent, deleted or purged). */
function live(entry: KvEntry | null): KvEntry | null {
  return entry !== null && entry.operation === 'PUT' ? entry : null;
}
