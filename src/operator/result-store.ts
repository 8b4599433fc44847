/**
 * Outputs too large for a transaction (over --max-result-bytes): kept as files in the data dir, served by
 * GET /v1/operator/results/:serviceId/:callId, referenced on chain by their sha256 and size (the client checks the
 * bytes against the hash, so the route needs no key and a copy from anywhere is as good). Bounded: files older than
 * `maxAgeMs` go, and the oldest go first while all together are over `maxTotalBytes`.
 */
import { createHash } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Hex } from 'viem';

export interface ResultStoreOptions {
  dir: string;
  /** All kept results together at most; the oldest go first. Default 1 GiB. */
  maxTotalBytes?: number;
  /** A result is kept this long. Default 7 days. */
  maxAgeMs?: number;
  now?: () => number;
}

export const DEFAULT_RESULT_STORE = { maxTotalBytes: 1024 ** 3, maxAgeMs: 7 * 24 * 3600_000 };

export interface StoredResult {
  sha256: Hex;
  sizeBytes: number;
}

/** Ids on the route are decimal uint64s; anything else names no file (and cannot leave the directory). */
const ID = /^(0|[1-9][0-9]{0,19})$/;

export class ResultStore {
  private readonly dir: string;
  private readonly maxTotalBytes: number;
  private readonly maxAgeMs: number;
  private readonly now: () => number;

  constructor(options: ResultStoreOptions) {
    this.dir = options.dir;
    this.maxTotalBytes = options.maxTotalBytes ?? DEFAULT_RESULT_STORE.maxTotalBytes;
    this.maxAgeMs = options.maxAgeMs ?? DEFAULT_RESULT_STORE.maxAgeMs;
    this.now = options.now ?? Date.now;
  }

  /** Writes the bytes (atomically: a reader never sees half a file) and prunes; returns their hash and size. */
  async put(serviceId: bigint, callId: bigint, bytes: Uint8Array): Promise<StoredResult> {
    const dir = join(this.dir, serviceId.toString());
    await mkdir(dir, { recursive: true });
    const path = join(dir, callId.toString());
    await writeFile(`${path}.tmp`, bytes, { mode: 0o600 });
    await rename(`${path}.tmp`, path);
    await this.prune(path);
    return { sha256: `0x${createHash('sha256').update(bytes).digest('hex')}`, sizeBytes: bytes.byteLength };
  }

  /** The kept file as a stream and its size, or null (unknown id, removed, or not a well-formed id). */
  async open(serviceId: string, callId: string): Promise<{ stream: ReadStream; sizeBytes: number } | null> {
    if (!ID.test(serviceId) || !ID.test(callId)) return null;
    const path = join(this.dir, serviceId, callId);
    const info = await stat(path).catch(() => null);
    if (info === null || !info.isFile()) return null;
    if (this.now() - info.mtimeMs > this.maxAgeMs) return null;
    return { stream: createReadStream(path), sizeBytes: info.size };
  }

  /** Removes files past their age, then the oldest while over the size bound (never `keep`, the one just written). */
  async prune(keep?: string): Promise<void> {
    const services = await readdir(this.dir).catch(() => [] as string[]);
    const files: { path: string; size: number; mtimeMs: number }[] = [];
    for (const service of services) {
      const names = await readdir(join(this.dir, service)).catch(() => [] as string[]);
      for (const name of names) {
        const path = join(this.dir, service, name);
        const info = await stat(path).catch(() => null);
        if (info?.isFile()) files.push({ path, size: info.size, mtimeMs: info.mtimeMs });
      }
    }
    files.sort((a, b) => a.mtimeMs - b.mtimeMs);
    let total = files.reduce((sum, file) => sum + file.size, 0);
    for (const file of files) {
      const old = this.now() - file.mtimeMs > this.maxAgeMs;
      if (file.path === keep || (!old && total <= this.maxTotalBytes)) continue;
      await rm(file.path, { force: true });
      total -= file.size;
    }
  }
}
