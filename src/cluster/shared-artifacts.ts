/**
 * Function bundles and dependency layers (npm and pip dependencies, programs compiled at deploy) across gateways.
 *
 * A gateway keeps them unpacked on its own disk (src/orchestrator/bundles.ts), one directory per content hash. In a
 * cluster the gateway that takes a deploy also puts them, as tar archives, in the JetStream object store
 * `KINDLING_ARTIFACTS` (R3 on a 3-node cluster) before the version is stored: so no gateway learns of a version whose
 * files it cannot get. Another gateway fetches them the first time it runs that version, checks them on the way in as
 * an upload is checked (the same TarGuard and unprivileged tar), and keeps them under the same hash.
 *
 * Objects no version refers to are deleted by `reconcile` once they are older than `graceMs` (a deploy puts its files
 * before its version reaches the other gateways' copies: the grace covers that lag). The same pass puts again what a
 * gateway has on disk and a version refers to but the store lacks (a deploy made before this existed, or an object
 * another gateway deleted in the instant a deploy of the same content put it again).
 */
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm, StorageType, type ObjectStore } from '@nats-io/obj';
import { KindlingError } from '../core/errors.js';
import type { BundleStore } from '../orchestrator/bundles.js';
import { clusterJetStream, defaultReplicas } from './connection.js';

export type ArtifactKind = 'bundle' | 'layer';
const KINDS: readonly ArtifactKind[] = ['bundle', 'layer'];
const SHA256 = /^[0-9a-f]{64}$/;

export const SHARED_ARTIFACTS_DEFAULTS = {
  bucket: 'KINDLING_ARTIFACTS',
  /** Total size of the bucket when this creates it; a put past it fails the deploy (503). */
  maxBytes: 2 * 1024 ** 3,
  graceMs: 10 * 60_000,
  reconcileIntervalMs: 5 * 60_000,
} as const;

/** The local side: where this server keeps unpacked bundles and layers, and which of them its versions refer to. */
export interface LocalArtifacts {
  stores: Record<ArtifactKind, Pick<BundleStore, 'has' | 'pathOf' | 'ingest' | 'release'>>;
  referenced: (kind: ArtifactKind) => ReadonlySet<string>;
}

export interface SharedArtifactsOptions {
  bucket?: string;
  replicas?: number;
  maxBytes?: number;
  graceMs?: number;
  /** How often `reconcile` runs; 0: only when called. */
  reconcileIntervalMs?: number;
  tarPath?: string;
  now?: () => number;
  onError?: (error: unknown, context: { phase: 'publish' | 'fetch' | 'reconcile'; name?: string }) => void;
}

export interface ReconcileReport {
  deleted: string[];
  published: string[];
}

function objectName(kind: ArtifactKind, sha256: string): string {
  return `${kind}.${sha256}`;
}

/** An object's mtime (RFC 3339 with nanoseconds, more than Date.parse reads); unreadable counts as now (kept). */
function mtimeMs(mtime: string, now: number): number {
  const ms = Date.parse(mtime.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(ms) ? now : ms;
}

function parseName(name: string): { kind: ArtifactKind; sha256: string } | null {
  const [kind, sha256] = name.split('.');
  return (kind === 'bundle' || kind === 'layer') && sha256 !== undefined && SHA256.test(sha256) ? { kind, sha256 } : null;
}

export class SharedArtifacts {
  private readonly inFlight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private reconciling: Promise<ReconcileReport> | null = null;
  private closed = false;

  private opened: Promise<ObjectStore> | null = null;

  private constructor(
    private readonly openStore: () => Promise<ObjectStore>,
    private readonly local: LocalArtifacts,
    private readonly options: SharedArtifactsOptions,
    /** A worker's: it fetches, and neither puts nor deletes (its NATS user may not). */
    private readonly readOnly: boolean,
  ) {}

  /**
   * A worker's side: fetches what the versions gateways send it need. The bucket is opened at the first fetch (a worker
   * may start before any gateway made it), and again after a failure.
   */
  static reader(nc: NatsConnection, local: Pick<LocalArtifacts, 'stores'>, options: Pick<SharedArtifactsOptions, 'bucket' | 'onError'> = {}): SharedArtifacts {
    const objm = new Objm(clusterJetStream(nc));
    return new SharedArtifacts(() => objm.open(options.bucket ?? SHARED_ARTIFACTS_DEFAULTS.bucket), { ...local, referenced: () => new Set() }, options, true);
  }

  /** A gateway's side: opens (or creates) the bucket, and reconciles at once and then every reconcileIntervalMs. */
  static async open(nc: NatsConnection, local: LocalArtifacts, options: SharedArtifactsOptions = {}): Promise<SharedArtifacts> {
    const objm = new Objm(clusterJetStream(nc));
    const bucket = options.bucket ?? SHARED_ARTIFACTS_DEFAULTS.bucket;
    // Opened as it is when it exists: an operator may have resized it (nats stream edit OBJ_KINDLING_ARTIFACTS).
    const store = await objm.open(bucket).catch(() =>
      objm
        .create(bucket, {
          description: 'Kindling: function bundles and dependency layers, as tar archives named <kind>.<sha256>',
          storage: StorageType.File,
          replicas: options.replicas ?? defaultReplicas(nc),
          max_bytes: options.maxBytes ?? SHARED_ARTIFACTS_DEFAULTS.maxBytes,
        })
        // Another gateway created it at the same moment.
        .catch((error: unknown) => objm.open(bucket).catch(() => Promise.reject(error as Error))),
    );
    const artifacts = new SharedArtifacts(() => Promise.resolve(store), local, options, false);
    artifacts.schedule(0);
    return artifacts;
  }

  private bucket(): Promise<ObjectStore> {
    const opening = (this.opened ??= this.openStore());
    // A failed open is tried again by the next caller.
    opening.catch(() => {
      if (this.opened === opening) this.opened = null;
    });
    return opening;
  }

  private get now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** A pass after `delayMs`, then one every reconcileIntervalMs (none more when that is 0). */
  private schedule(delayMs: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      void this.reconcile()
        .catch((error: unknown) => this.options.onError?.(error, { phase: 'reconcile' }))
        .finally(() => {
          const interval = this.options.reconcileIntervalMs ?? SHARED_ARTIFACTS_DEFAULTS.reconcileIntervalMs;
          if (interval > 0) this.schedule(interval);
        });
    }, delayMs);
    this.timer.unref();
  }

  /** Runs one thing per object name at a time: a second caller waits for the first. */
  private once(name: string, work: () => Promise<void>): Promise<void> {
    const running = this.inFlight.get(name);
    if (running !== undefined) return running;
    const started = work().finally(() => this.inFlight.delete(name));
    this.inFlight.set(name, started);
    return started;
  }

  /**
   * Puts the local bundle or layer `sha256` in the object store unless it is there. Called before a version that
   * refers to it is stored; throws CLUSTER_UNAVAILABLE (503) when NATS does not take it, so the deploy fails whole.
   */
  publish(kind: ArtifactKind, sha256: string): Promise<void> {
    const name = objectName(kind, sha256);
    if (this.readOnly) return Promise.reject(new Error('a worker does not publish bundles'));
    return this.once(`put ${name}`, async () => {
      try {
        const there = await (await this.bucket()).info(name);
        if (there !== null && !there.deleted) return;
        await this.put(kind, sha256);
      } catch (error) {
        this.options.onError?.(error, { phase: 'publish', name });
        throw new KindlingError('CLUSTER_UNAVAILABLE', `the cluster's object store did not take the function's ${kind} (${error instanceof Error ? error.message : String(error)}); nothing was stored, deploy again shortly`, { retryAfterSeconds: 1, cause: error });
      }
    });
  }

  private async put(kind: ArtifactKind, sha256: string): Promise<void> {
    const name = objectName(kind, sha256);
    // The unpacked tree as a tar: the fetching side checks and unpacks it as it would an upload.
    const tar = spawn(this.options.tarPath ?? 'tar', ['-c', '-f', '-', '-C', this.local.stores[kind].pathOf(sha256), '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    tar.stderr.setEncoding('utf8').on('data', (text: string) => {
      if (stderr.length < 2048) stderr += text;
    });
    const exited = new Promise<number>((resolve, reject) => {
      tar.on('error', reject);
      tar.on('close', (code) => resolve(code ?? 128));
    });
    try {
      await (await this.bucket()).put({ name, metadata: { kind, sha256 } }, Readable.toWeb(tar.stdout) as ReadableStream<Uint8Array>);
    } catch (error) {
      tar.kill('SIGKILL');
      await exited.catch(() => undefined);
      throw error;
    }
    const code = await exited;
    if (code !== 0) {
      // Half an archive must not be fetched: the object goes.
      await (await this.bucket()).delete(name).catch(() => undefined);
      throw new Error(`tar of the ${kind} ${sha256} exited with ${code}: ${stderr.trim().slice(0, 300)}`);
    }
  }

  /**
   * Makes sure this server has the bundle or layer `sha256` on disk: fetched from the object store (once, whatever the
   * number of callers) when it is missing. Throws CLUSTER_UNAVAILABLE (503, retry) when it cannot be had.
   */
  async ensure(kind: ArtifactKind, sha256: string): Promise<void> {
    const local = this.local.stores[kind];
    if (await local.has(sha256)) return;
    const name = objectName(kind, sha256);
    await this.once(`get ${name}`, async () => {
      if (await local.has(sha256)) return;
      let found;
      try {
        found = await (await this.bucket()).get(name);
      } catch (error) {
        this.options.onError?.(error, { phase: 'fetch', name });
        throw new KindlingError('CLUSTER_UNAVAILABLE', `the function's ${kind} could not be read from the cluster's object store (${error instanceof Error ? error.message : String(error)}); retry shortly`, { retryAfterSeconds: 1, cause: error });
      }
      if (found === null) {
        throw new KindlingError(
          'CLUSTER_UNAVAILABLE',
          `the function's ${kind} (${sha256.slice(0, 12)}) is not in the cluster's object store yet: the gateway that took its deploy puts it there again within ${Math.round((this.options.reconcileIntervalMs ?? SHARED_ARTIFACTS_DEFAULTS.reconcileIntervalMs) / 60_000)} minutes while it runs; deploy the function again if that gateway is gone`,
          { retryAfterSeconds: 5 },
        );
      }
      const stream = Readable.fromWeb(found.data as import('node:stream/web').ReadableStream<Uint8Array>);
      let info;
      try {
        // Checked as an upload is (no way out of the tree, no devices), unpacked by an unprivileged tar, kept by hash.
        info = await local.ingest(stream, { key: sha256 });
      } catch (error) {
        this.options.onError?.(error, { phase: 'fetch', name });
        throw new KindlingError('CLUSTER_UNAVAILABLE', `the function's ${kind} read from the cluster's object store could not be unpacked (${error instanceof Error ? error.message : String(error)}); retry shortly`, { retryAfterSeconds: 1, cause: error });
      } finally {
        stream.destroy();
      }
      // The version that needs it is in this server's store: collect() keeps it from now on.
      local.release(info.sha256);
      const failed = await found.error;
      if (failed) {
        this.options.onError?.(failed, { phase: 'fetch', name });
        throw new KindlingError('CLUSTER_UNAVAILABLE', `reading the function's ${kind} from the cluster's object store failed (${failed.message}); retry shortly`, { retryAfterSeconds: 1, cause: failed });
      }
    });
  }

  /**
   * One pass over the bucket: deletes objects no version of this server's copy refers to and that are older than
   * graceMs; puts what a version refers to, this server has and the bucket lacks. Several gateways may run it at once
   * (a delete twice is harmless).
   */
  reconcile(): Promise<ReconcileReport> {
    if (this.readOnly) return Promise.resolve({ deleted: [], published: [] });
    // One pass at a time, each started after its call (a pass under way may have listed before a change).
    const pass = (this.reconciling ?? Promise.resolve()).then(
      () => this.reconcileOnce(),
      () => this.reconcileOnce(),
    );
    this.reconciling = pass;
    void pass.finally(() => {
      if (this.reconciling === pass) this.reconciling = null;
    }).catch(() => undefined);
    return pass;
  }

  private async reconcileOnce(): Promise<ReconcileReport> {
    const report: ReconcileReport = { deleted: [], published: [] };
    const graceMs = this.options.graceMs ?? SHARED_ARTIFACTS_DEFAULTS.graceMs;
    const referenced = { bundle: this.local.referenced('bundle'), layer: this.local.referenced('layer') };
    const present = new Set<string>();
    const store = await this.bucket();
    for (const object of await store.list()) {
      if (object.deleted) continue;
      const parsed = parseName(object.name);
      if (parsed === null) continue;
      present.add(object.name);
      if (referenced[parsed.kind].has(parsed.sha256) || this.now - mtimeMs(object.mtime, this.now) < graceMs) continue;
      // Read again just before: a deploy of the same content may have put it anew since the list.
      const latest = await store.info(object.name);
      if (latest === null || latest.deleted || this.now - mtimeMs(latest.mtime, this.now) < graceMs) continue;
      await store.delete(object.name);
      report.deleted.push(object.name);
    }
    for (const kind of KINDS) {
      for (const sha256 of referenced[kind]) {
        const name = objectName(kind, sha256);
        if (this.closed || present.has(name) || !(await this.local.stores[kind].has(sha256))) continue;
        try {
          await this.publish(kind, sha256);
          report.published.push(name);
        } catch (error) {
          this.options.onError?.(error, { phase: 'reconcile', name });
        }
      }
    }
    return report;
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
