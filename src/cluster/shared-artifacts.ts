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
 * before its version reaches the other gateways' copies: the grace covers that lag) and two passes `confirmMs` apart
 * found them so (a deploy that reuses content already there does not put it again, so its age says nothing then). The
 * same pass puts again what a gateway has on disk and a version refers to but the store lacks (a deploy made before
 * this existed, or an object a gateway whose copy lagged deleted).
 */
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import type { NatsConnection } from '@nats-io/transport-node';
import { createHash } from 'node:crypto';
import type { JetStreamManager, MsgRequest, StoredMsg } from '@nats-io/jetstream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Base64UrlPaddedCodec, Objm, StorageType, setSha256Backend, type ObjectStore } from '@nats-io/obj';
import { KindlingError } from '../core/errors.js';
import type { BundleStore } from '../orchestrator/bundles.js';
import { clusterJetStream, clusterJetStreamManager, defaultReplicas } from './connection.js';

export type ArtifactKind = 'bundle' | 'layer';
const KINDS: readonly ArtifactKind[] = ['bundle', 'layer'];
const SHA256 = /^[0-9a-f]{64}$/;
/** Chunks of half NATS's default max_payload (1 MiB): a quarter of the round trips of the client's 128 KiB. */
const CHUNK_BYTES = 512 * 1024;

// The client hashes every object it puts and gets; its default is a pure-JS SHA-256, node:crypto's is 3-5x faster (a
// 16 MiB get: 516 ms against 105 ms on this machine). Process-wide, and only Kindling's object store uses it.
setSha256Backend('native');

export const SHARED_ARTIFACTS_DEFAULTS = {
  bucket: 'KINDLING_ARTIFACTS',
  /** Total size of the bucket when this creates it; a put past it fails the deploy (503). */
  maxBytes: 2 * 1024 ** 3,
  graceMs: 10 * 60_000,
  reconcileIntervalMs: 5 * 60_000,
  confirmMs: 4 * 60_000,
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
  /** An unreferenced object is deleted by a pass at least this long after the pass that first found it so. */
  confirmMs?: number;
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

/** How long a chunk the leader's record names may be missing at the replica a direct get reached. */
const REPLICA_LAG_MS = 3_000;

/**
 * The first message on `subject` after `seq`, by direct get; asked again (with backoff) while the replica lacks it,
 * then of the stream's leader (a replica far behind, e.g. catching up after a restart, keeps answering a client
 * connected to its server).
 */
async function chunkAfter(jsm: JetStreamManager, stream: string, subject: string, seq: number): Promise<StoredMsg | null> {
  const startedMs = Date.now();
  for (let attempt = 0; Date.now() - startedMs <= REPLICA_LAG_MS; attempt++) {
    const chunk = await jsm.direct.getMessage(stream, { next_by_subj: subject, seq: seq + 1 });
    if (chunk !== null) return chunk;
    await sleep(Math.min(500, 20 * 2 ** attempt));
  }
  // (The server takes next_by_subj in a message get; the client's type names only seq and last_by_subj.)
  return jsm.streams.getMessage(stream, { next_by_subj: subject, seq: seq + 1 } as unknown as MsgRequest);
}

function parseName(name: string): { kind: ArtifactKind; sha256: string } | null {
  const [kind, sha256] = name.split('.');
  return (kind === 'bundle' || kind === 'layer') && sha256 !== undefined && SHA256.test(sha256) ? { kind, sha256 } : null;
}

export class SharedArtifacts {
  private readonly inFlight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private reconciling: Promise<ReconcileReport> | null = null;
  /** Objects a pass found no version referring to (name -> when first found so): deleted by a pass confirmMs later. */
  private readonly unreferencedSince = new Map<string, number>();
  private closed = false;

  private opened: Promise<ObjectStore> | null = null;
  private managed: Promise<JetStreamManager> | null = null;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly openStore: () => Promise<ObjectStore>,
    private readonly local: LocalArtifacts,
    private readonly options: SharedArtifactsOptions,
    /** A worker's: it fetches, and neither puts nor deletes (its NATS user may not). */
    private readonly readOnly: boolean,
  ) {}

  /**
   * A worker's side: fetches what the versions gateways send it need, by message and direct gets alone (see
   * readObject), and neither puts nor deletes.
   */
  static reader(nc: NatsConnection, local: Pick<LocalArtifacts, 'stores'>, options: Pick<SharedArtifactsOptions, 'bucket' | 'onError'> = {}): SharedArtifacts {
    return new SharedArtifacts(nc, () => Promise.reject(new Error('a worker does not write the object store')), { ...local, referenced: () => new Set() }, options, true);
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
    const artifacts = new SharedArtifacts(nc, () => Promise.resolve(store), local, options, false);
    artifacts.schedule(0);
    return artifacts;
  }

  private get bucketName(): string {
    return this.options.bucket ?? SHARED_ARTIFACTS_DEFAULTS.bucket;
  }

  private manager(): Promise<JetStreamManager> {
    const opening = (this.managed ??= clusterJetStreamManager(this.nc));
    opening.catch(() => {
      if (this.managed === opening) this.managed = null;
    });
    return opening;
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
        // There already (the same content deployed before): kept as it is. A put again would purge the chunks readers
        // are reading; a gateway's pass deletes it only after two passes found no version referring to it (reconcile).
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
    // Settled (never rejected) from the start: a tar that cannot be spawned is an exit code, not an unhandled rejection.
    const exited = new Promise<number | Error>((resolve) => {
      tar.on('error', resolve);
      tar.on('close', (code) => resolve(code ?? 128));
    });
    const store = await this.bucket();
    try {
      await store.put({ name, metadata: { kind, sha256 }, options: { max_chunk_size: CHUNK_BYTES } }, Readable.toWeb(tar.stdout) as ReadableStream<Uint8Array>);
    } catch (error) {
      tar.kill('SIGKILL');
      await exited;
      await store.delete(name).catch(() => undefined);
      throw error;
    }
    const code = await exited;
    if (code !== 0) {
      // Half an archive (or none) must not be fetched: the object goes.
      await store.delete(name).catch(() => undefined);
      throw new Error(`tar of the ${kind} ${sha256} ${code instanceof Error ? `failed: ${code.message}` : `exited with ${code}: ${stderr.trim().slice(0, 300)}`}`);
    }
  }

  /**
   * The object's bytes, a chunk at a time as the reader asks: its record from the stream's leader (a message get, so a
   * read right after the put finds it), then each chunk by a direct get (raw bytes from any replica; a message get
   * answers base64 in JSON, which took 1.2 s for 16 MiB against 0.6 s), asked again while a replica behind the leader
   * does not have it yet. No consumer is made, so a worker's NATS user needs no right to make one (a push consumer's
   * delivery subject is not checked against its maker's permissions), and a slow unpack holds one chunk in memory, not
   * the object. The SHA-256 and size the record gives are checked at the end. Null: no such object. An object put
   * again meanwhile (its chunks purged) fails the read: the caller's next call reads the new one.
   */
  private async readObject(name: string): Promise<AsyncGenerator<Uint8Array> | null> {
    const jsm = await this.manager();
    const stream = `OBJ_${this.bucketName}`;
    const meta = await jsm.streams.getMessage(stream, { last_by_subj: `$O.${this.bucketName}.M.${Base64UrlPaddedCodec.encode(name)}` });
    if (meta === null) return null;
    const info = JSON.parse(new TextDecoder().decode(meta.data)) as { nuid?: string; size?: number; chunks?: number; digest?: string; deleted?: boolean };
    if (info.deleted === true || typeof info.nuid !== 'string' || typeof info.chunks !== 'number' || typeof info.digest !== 'string') return null;
    const { nuid, chunks, digest } = info;
    const bucket = this.bucketName;
    return (async function* chunksOf(): AsyncGenerator<Uint8Array> {
      const hash = createHash('sha256');
      let seq = 0;
      let bytes = 0;
      for (let index = 0; index < chunks; index++) {
        const chunk = await chunkAfter(jsm, stream, `$O.${bucket}.C.${nuid}`, seq);
        if (chunk === null) throw new Error(`the object ${name} ends after ${index} of its ${chunks} chunks (replaced or deleted meanwhile)`);
        seq = chunk.seq;
        bytes += chunk.data.length;
        hash.update(chunk.data);
        yield chunk.data;
      }
      const got = `SHA-256=${hash.digest('base64url')}`;
      if (got.replace(/=+$/, '') !== digest.replace(/=+$/, '') || (info.size !== undefined && bytes !== info.size)) {
        throw new Error(`the object ${name} does not match its record (${bytes} bytes, ${got}; the record says ${info.size ?? '?'} bytes, ${digest})`);
      }
    })();
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
        found = await this.readObject(name);
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
      const stream = Readable.from(found);
      let info;
      try {
        // Checked as an upload is (no way out of the tree, no devices), unpacked by an unprivileged tar, kept by hash.
        info = await local.ingest(stream, { key: sha256 });
      } catch (error) {
        this.options.onError?.(error, { phase: 'fetch', name });
        // This node's own limit (--max-bundle-bytes, the build disk) below the deploying gateway's: retrying will not help.
        if (error instanceof KindlingError && error.code === 'PAYLOAD_TOO_LARGE') {
          throw new KindlingError('CLUSTER_UNAVAILABLE', `the function's ${kind} is larger than this node takes (${error.message.slice(0, 200)}); give every node of the cluster the same --max-bundle-bytes and --build-disk-mb`, { cause: error });
        }
        throw new KindlingError('CLUSTER_UNAVAILABLE', `the function's ${kind} read from the cluster's object store could not be unpacked (${error instanceof Error ? error.message : String(error)}); retry shortly`, { retryAfterSeconds: 1, cause: error });
      } finally {
        stream.destroy();
      }
      // The caller refers to it (a version in this server's store, or a worker's ArtifactUse): collect() keeps it.
      local.release(info.sha256);
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
    const confirmMs = this.options.confirmMs ?? SHARED_ARTIFACTS_DEFAULTS.confirmMs;
    const referenced = { bundle: this.local.referenced('bundle'), layer: this.local.referenced('layer') };
    const present = new Set<string>();
    const store = await this.bucket();
    for (const object of await store.list()) {
      if (object.deleted) continue;
      const parsed = parseName(object.name);
      if (parsed === null) continue;
      present.add(object.name);
      if (referenced[parsed.kind].has(parsed.sha256) || this.now - mtimeMs(object.mtime, this.now) < graceMs) {
        this.unreferencedSince.delete(object.name);
        continue;
      }
      // Found unreferenced by an earlier pass too, long enough ago: a copy lagging behind a deploy that reuses this
      // content (kept as it was, not put again) would have to lag that long to make this delete it.
      const since = this.unreferencedSince.get(object.name);
      if (since === undefined) this.unreferencedSince.set(object.name, this.now);
      if (since === undefined || this.now - since < confirmMs) continue;
      // Read again just before: a deploy of the same content may have put it anew since the list.
      const latest = await store.info(object.name);
      if (latest === null || latest.deleted || this.now - mtimeMs(latest.mtime, this.now) < graceMs) continue;
      // And this copy's versions again: a deploy may have stored one since the pass began.
      if (this.local.referenced(parsed.kind).has(parsed.sha256)) continue;
      await store.delete(object.name);
      this.unreferencedSince.delete(object.name);
      report.deleted.push(object.name);
    }
    // Objects gone since (deleted by another gateway): forgotten.
    for (const name of this.unreferencedSince.keys()) if (!present.has(name)) this.unreferencedSince.delete(name);
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
