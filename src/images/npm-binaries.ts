/**
 * Programs an image takes from the npm registry (Deno's and Bun's Linux builds): the package tarball is downloaded
 * once, its sha512 compared with the integrity pinned in the recipe, and kept under the images dir by that hash, so a
 * rebuild reuses it and a tampered or different download fails the build. The rootfs build then extracts the one file
 * it names (see mmdebstrapArgs).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { NpmBinary } from './recipes.js';

export const DEFAULT_NPM_REGISTRY = 'https://registry.npmjs.org';
/** Larger than any runtime's tarball (Bun's is about 50 MB); a registry that sends more is refused mid-download. */
const MAX_TARBALL_BYTES = 512 * 1024 * 1024;

/** The registry URL of a package version's tarball (`@scope/name` -> `@scope/name/-/name-1.0.0.tgz`). */
export function tarballUrl(registry: string, binary: Pick<NpmBinary, 'package' | 'version'>): string {
  const base = binary.package.slice(binary.package.lastIndexOf('/') + 1);
  return `${registry.replace(/\/+$/, '')}/${binary.package}/-/${base}-${binary.version}.tgz`;
}

/** The hex sha512 an `sha512-<base64>` integrity names; throws for another algorithm (the recipes pin sha512). */
export function integrityHex(integrity: string): string {
  const match = /^sha512-([A-Za-z0-9+/]{86}==)$/.exec(integrity);
  if (match === null) throw new Error(`integrity "${integrity}" is not an sha512 integrity (sha512-<base64>)`);
  return Buffer.from(match[1] ?? '', 'base64').toString('hex');
}

export interface FetchTarballOptions {
  registry: string;
  /** Where verified tarballs are kept, named by their sha512. */
  cacheDir: string;
  signal?: AbortSignal;
}

/** The path of the verified tarball of `binary`: the cached one, or downloaded now and checked before it is kept. */
export async function fetchNpmTarball(binary: NpmBinary, opts: FetchTarballOptions): Promise<string> {
  const want = integrityHex(binary.integrity);
  const file = path.join(opts.cacheDir, `${want}.tgz`);
  // Written under a temporary name and renamed once checked: a kept file is always a whole, verified one.
  if ((await sha512OfFile(file)) === want) return file;
  await fs.mkdir(opts.cacheDir, { recursive: true, mode: 0o755 });
  const url = tarballUrl(opts.registry, binary);
  const response = await fetch(url, { signal: opts.signal ?? null });
  if (!response.ok || response.body === null) throw new Error(`${binary.package}@${binary.version}: GET ${url} answered ${response.status}`);
  const partial = `${file}.${randomBytes(4).toString('hex')}.part`;
  const hash = createHash('sha512');
  let bytes = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      if (bytes > MAX_TARBALL_BYTES) return done(new Error(`${binary.package}@${binary.version}: the tarball is larger than ${MAX_TARBALL_BYTES} bytes`));
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(response.body as WebReadableStream<Uint8Array>), meter, createWriteStream(partial, { mode: 0o644 }), { signal: opts.signal ?? new AbortController().signal });
    const got = hash.digest('hex');
    if (got !== want) {
      throw new Error(`${binary.package}@${binary.version}: the tarball from ${url} does not match the pinned integrity (sha512 ${got.slice(0, 16)}…, expected ${want.slice(0, 16)}…)`);
    }
    await fs.rename(partial, file);
    return file;
  } finally {
    await fs.rm(partial, { force: true });
  }
}

/** sha512 (hex) of a file, or null when it does not exist. */
async function sha512OfFile(file: string): Promise<string | null> {
  const hash = createHash('sha512');
  try {
    const handle = await fs.open(file, 'r');
    try {
      for await (const chunk of handle.createReadStream()) hash.update(chunk as Buffer);
    } finally {
      await handle.close();
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  return hash.digest('hex');
}
