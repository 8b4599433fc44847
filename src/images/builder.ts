/**
 * Builds runtime images from their recipes (see recipes.ts):
 *
 *   ${imagesDir}/${short}/rootfs/        the root filesystem (sandbox executor; chroot-able)
 *   ${imagesDir}/${short}/rootfs.ext4    optional, `ext4: true` (microvm executor)
 *   ${imagesDir}/${short}/recipe.json    the stamp: recipe hash, sizes, installed package versions. Written LAST, so a
 *                                        half-built image is never taken as done.
 *   Docker image `${name}:${tag}`        `docker import` of the rootfs through the engine API, labelled
 *                                        `dev.kindling.recipe=<hash>`.
 *
 * A rootfs is bootstrapped into `${short}/.build-<random>/` and renamed into place; the old one is renamed aside and
 * removed after the stamp is written. An image whose stamp and Docker label both match the recipe hash is skipped, so
 * a cached run costs a few file reads and one inspect per image.
 *
 * No process.env is read here: the caller passes imagesDir, the Docker client and the mirrors.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import type Dockerode from 'dockerode';
import { processAlive, shellQuote } from '../executors/shared/process.js';
import {
  BUILDER_VERSION,
  COMMON_CUSTOMIZE,
  DEBIAN,
  IMAGE_SHORT_NAMES,
  IMAGE_RECIPES,
  SLIMMING,
  imageRef,
  recipeHash,
  resolveImageNames,
  type ImageRecipe,
  type ImageShortName,
} from './recipes.js';

export const RECIPE_LABEL = 'dev.kindling.recipe';
export const IMAGE_LABEL = 'dev.kindling.image';
export const DEFAULT_IMAGES_DIR = '/var/lib/kindling/images';
const MERGED_USR_HOOK_DIR = '/usr/share/mmdebstrap/hooks/merged-usr';
/** Bump when buildExt4's mkfs options change, so cached ext4 files are rebuilt. */
const EXT4_FORMAT = 1;

/** Anything with info/warn (console, a pino logger, a test spy). `debug` gets mmdebstrap's own output. */
export interface ImageLog {
  info(msg: string): void;
  warn(msg: string): void;
  debug?(msg: string): void;
}
const silentLog: ImageLog = { info: () => {}, warn: () => {} };

export interface ImagePaths {
  dir: string;
  rootfsDir: string;
  stampFile: string;
  ext4File: string;
  lockFile: string;
}

export function imagePaths(imagesDir: string, short: ImageShortName): ImagePaths {
  const dir = path.join(path.resolve(imagesDir), short);
  return {
    dir,
    rootfsDir: path.join(dir, 'rootfs'),
    stampFile: path.join(dir, 'recipe.json'),
    ext4File: path.join(dir, 'rootfs.ext4'),
    lockFile: path.join(dir, '.lock'),
  };
}

/** Contents of recipe.json. */
export interface ImageStamp {
  recipeHash: string;
  builderVersion: number;
  name: string;
  short: ImageShortName;
  /** ISO time the rootfs finished. */
  builtAt: string;
  buildMs: number;
  /** Sum of regular file and symlink sizes in the rootfs (hard links counted once). */
  sizeBytes: number;
  fileCount: number;
  /** Every installed Debian package and its version. */
  packages: Record<string, string>;
  ext4?: { recipeHash: string; format: number; sizeBytes: number; builtAt: string };
}

export interface BootstrapRequest {
  recipe: ImageRecipe;
  /** Does not exist yet; the bootstrapper creates it. */
  targetDir: string;
  suite: string;
  mirror: string;
  securityMirror: string;
  log: ImageLog;
  signal: AbortSignal;
}
/** Produces a complete root filesystem in targetDir (mmdebstrap by default; a fake in unit tests). */
export type Bootstrapper = (req: BootstrapRequest) => Promise<void>;

export interface BuildImagesOptions {
  imagesDir: string;
  /** Short names, Docker names or runtime names; all images when empty/absent. */
  names?: readonly string[];
  /** Rebuild the rootfs and re-import the Docker image even when the stamps match. */
  force?: boolean;
  /** Without a client (or when the engine does not answer) only the rootfs directories are built. */
  docker?: Dockerode;
  /** Also produce ${short}/rootfs.ext4. Default false. */
  ext4?: boolean;
  /** Images built at the same time. Default 2 (mmdebstrap is mostly single-threaded dpkg work). */
  concurrency?: number;
  /** Debian mirror. Default http://deb.debian.org/debian. */
  mirror?: string;
  /** Debian security mirror. Default http://deb.debian.org/debian-security. */
  securityMirror?: string;
  /** Per-image limit for the bootstrap step. Default 20 minutes. */
  bootstrapTimeoutMs?: number;
  log?: ImageLog;
  signal?: AbortSignal;
  /** Test seam: replaces mmdebstrap. */
  bootstrap?: Bootstrapper;
}

export type RootfsStatus = 'built' | 'cached' | 'failed';
export type DockerStatus = 'imported' | 'cached' | 'skipped' | 'unreachable' | 'failed';
export type Ext4Status = 'built' | 'cached' | 'skipped' | 'failed';

export interface ImageBuildResult {
  name: string;
  short: ImageShortName;
  ref: string;
  recipeHash: string;
  rootfsDir: string;
  rootfs: RootfsStatus;
  docker: DockerStatus;
  dockerImageId: string | null;
  ext4: Ext4Status;
  sizeBytes: number | null;
  durationMs: number;
  error?: Error;
}

export class ImageBuildError extends Error {
  readonly results: ImageBuildResult[];
  constructor(results: ImageBuildResult[]) {
    const failed = results.filter((r) => r.error);
    super(`image build failed: ${failed.map((r) => `${r.short}: ${r.error?.message ?? 'unknown'}`).join('; ')}`, {
      cause: failed[0]?.error,
    });
    this.name = 'ImageBuildError';
    this.results = results;
  }
}

/**
 * Builds (or confirms cached) the requested images. Resolves with one result per image; rejects with an
 * ImageBuildError (carrying all results) when any image failed, after the others have finished.
 */
export async function buildImages(opts: BuildImagesOptions): Promise<ImageBuildResult[]> {
  const log = opts.log ?? silentLog;
  const recipes = resolveImageNames(opts.names ?? []);
  const imagesDir = path.resolve(opts.imagesDir);
  await fs.mkdir(imagesDir, { recursive: true, mode: 0o755 });

  let docker: Dockerode | undefined;
  let dockerMissing: DockerStatus = 'skipped';
  if (opts.docker) {
    const why = await pingDocker(opts.docker);
    if (why === null) docker = opts.docker;
    else {
      dockerMissing = 'unreachable';
      log.warn(`docker engine not reachable (${why}): building rootfs directories only, no Docker images`);
    }
  }

  const ctx: BuildContext = {
    imagesDir,
    force: opts.force ?? false,
    docker,
    dockerMissing,
    ext4: opts.ext4 ?? false,
    mirror: opts.mirror ?? DEBIAN.defaultMirror,
    securityMirror: opts.securityMirror ?? DEBIAN.defaultSecurityMirror,
    bootstrapTimeoutMs: opts.bootstrapTimeoutMs ?? 20 * 60_000,
    log,
    signal: opts.signal ?? new AbortController().signal,
    bootstrap: opts.bootstrap ?? mmdebstrap,
  };
  const results = await mapLimit(recipes, Math.max(1, opts.concurrency ?? 2), (r) => buildOne(ctx, r));
  if (results.some((r) => r.error)) throw new ImageBuildError(results);
  return results;
}

interface BuildContext {
  imagesDir: string;
  force: boolean;
  docker: Dockerode | undefined;
  dockerMissing: DockerStatus;
  ext4: boolean;
  mirror: string;
  securityMirror: string;
  bootstrapTimeoutMs: number;
  log: ImageLog;
  signal: AbortSignal;
  bootstrap: Bootstrapper;
}

async function buildOne(ctx: BuildContext, recipe: ImageRecipe): Promise<ImageBuildResult> {
  const started = Date.now();
  const hash = recipeHash(recipe);
  const p = imagePaths(ctx.imagesDir, recipe.short);
  const result: ImageBuildResult = {
    name: recipe.name,
    short: recipe.short,
    ref: imageRef(recipe),
    recipeHash: hash,
    rootfsDir: p.rootfsDir,
    rootfs: 'failed',
    docker: ctx.docker ? 'failed' : ctx.dockerMissing,
    dockerImageId: null,
    ext4: ctx.ext4 ? 'failed' : 'skipped',
    sizeBytes: null,
    durationMs: 0,
  };
  const tag = `[${recipe.short}]`;
  let release: (() => Promise<void>) | undefined;
  try {
    ctx.signal.throwIfAborted();
    await fs.mkdir(p.dir, { recursive: true, mode: 0o755 });
    release = await acquireLock(p.lockFile, recipe.short);
    await removeLeftovers(p.dir, ctx.log);

    // 1. rootfs
    let stamp = await readStamp(p.stampFile);
    const rootfsCached = !ctx.force && stamp?.recipeHash === hash && (await isDir(p.rootfsDir));
    if (rootfsCached && stamp) {
      result.rootfs = 'cached';
    } else {
      ctx.log.info(`${tag} building rootfs (${recipe.packages.join(' ') || 'minbase only'})`);
      stamp = await buildRootfs(ctx, recipe, hash, p);
      result.rootfs = 'built';
      ctx.log.info(`${tag} rootfs ready in ${fmtMs(stamp.buildMs)}, ${fmtBytes(stamp.sizeBytes)}`);
    }
    result.sizeBytes = stamp.sizeBytes;

    // 2. ext4 (optional)
    if (ctx.ext4) {
      const ext4Cached =
        result.rootfs === 'cached' &&
        stamp.ext4?.recipeHash === hash &&
        stamp.ext4.format === EXT4_FORMAT &&
        (await fileSize(p.ext4File)) !== null;
      if (ext4Cached) result.ext4 = 'cached';
      else {
        const t0 = Date.now();
        const sizeBytes = await buildExt4(ctx, recipe, p);
        stamp = { ...stamp, ext4: { recipeHash: hash, format: EXT4_FORMAT, sizeBytes, builtAt: new Date().toISOString() } };
        await writeStamp(p.stampFile, stamp);
        result.ext4 = 'built';
        ctx.log.info(`${tag} ext4 image ready in ${fmtMs(Date.now() - t0)}, ${fmtBytes(sizeBytes)}`);
      }
    }

    // 3. Docker image
    if (ctx.docker) {
      const existing = await inspectImage(ctx.docker, imageRef(recipe));
      // Same recipe hash = same image, even when only the rootfs had to be rebuilt (e.g. it had been deleted).
      if (!ctx.force && existing && existing.label === hash) {
        result.docker = 'cached';
        result.dockerImageId = existing.id;
      } else {
        const t0 = Date.now();
        result.dockerImageId = await importRootfs(ctx.docker, recipe, hash, p.rootfsDir, ctx.signal);
        result.docker = 'imported';
        ctx.log.info(`${tag} docker image ${imageRef(recipe)} imported in ${fmtMs(Date.now() - t0)}`);
        if (existing && existing.id !== result.dockerImageId) await removeOldImage(ctx.docker, existing.id, ctx.log);
      }
    }
  } catch (err) {
    result.error = err instanceof Error ? err : new Error(String(err));
    ctx.log.warn(`${tag} failed: ${result.error.message}`);
  } finally {
    if (release) await release().catch(() => {});
    result.durationMs = Date.now() - started;
  }
  return result;
}

async function buildRootfs(ctx: BuildContext, recipe: ImageRecipe, hash: string, p: ImagePaths): Promise<ImageStamp> {
  const t0 = Date.now();
  const buildDir = path.join(p.dir, `.build-${randomBytes(4).toString('hex')}`);
  const ac = new AbortController();
  const timer = setTimeout(
    () => ac.abort(new Error(`bootstrap timed out after ${ctx.bootstrapTimeoutMs} ms`)),
    ctx.bootstrapTimeoutMs,
  );
  const onAbort = (): void => ac.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  let oldDir: string | undefined;
  try {
    await ctx.bootstrap({
      recipe,
      targetDir: buildDir,
      suite: DEBIAN.suite,
      mirror: ctx.mirror,
      securityMirror: ctx.securityMirror,
      log: ctx.log,
      signal: ac.signal,
    });
    ac.signal.throwIfAborted();
    await verifyRootfs(buildDir);
    const { sizeBytes, fileCount } = await measureTree(buildDir);
    const stamp: ImageStamp = {
      recipeHash: hash,
      builderVersion: BUILDER_VERSION,
      name: recipe.name,
      short: recipe.short,
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - t0,
      sizeBytes,
      fileCount,
      packages: await readInstalledPackages(buildDir),
    };
    // Invalidate first, swap, then stamp: at every instant either no stamp or a stamp matching rootfs/ exists.
    await fs.rm(p.stampFile, { force: true });
    if (await exists(p.rootfsDir)) {
      oldDir = path.join(p.dir, `.old-${randomBytes(4).toString('hex')}`);
      await fs.rename(p.rootfsDir, oldDir);
    }
    await fs.rename(buildDir, p.rootfsDir);
    await writeStamp(p.stampFile, stamp);
    return stamp;
  } catch (err) {
    await safeRemove(buildDir, ctx.log).catch((e: unknown) =>
      ctx.log.warn(`could not remove ${buildDir}: ${(e as Error).message}`),
    );
    throw err;
  } finally {
    clearTimeout(timer);
    ctx.signal.removeEventListener('abort', onAbort);
    if (oldDir) await safeRemove(oldDir, ctx.log).catch(() => {});
  }
}

/** The invariants every executor relies on; checked before a rootfs is stamped. */
async function verifyRootfs(dir: string): Promise<void> {
  for (const d of ['work', '.kindling', 'tmp', 'etc']) {
    if (!(await isDir(path.join(dir, d)))) throw new Error(`rootfs is missing /${d}`);
  }
  const passwd = await fs.readFile(path.join(dir, 'etc/passwd'), 'utf8');
  if (!/^nobody:x:65534:/m.test(passwd)) throw new Error('rootfs /etc/passwd has no nobody (uid 65534)');
}

// ---------------------------------------------------------------------------------------------------------------
// mmdebstrap

/** The mmdebstrap command line for a recipe (exported for tests and for humans debugging a build). */
export function mmdebstrapArgs(req: Pick<BootstrapRequest, 'recipe' | 'targetDir' | 'suite' | 'mirror' | 'securityMirror'>): string[] {
  const { recipe, suite } = req;
  const comps = DEBIAN.components.join(' ');
  const sources = [
    ...DEBIAN.suites.map((s) => `deb ${req.mirror} ${s.replace('{suite}', suite)} ${comps}`),
    `deb ${req.securityMirror} ${DEBIAN.securitySuite.replace('{suite}', suite)} ${comps}`,
  ];
  const customize = [
    'set -e',
    ...COMMON_CUSTOMIZE,
    `chroot "$1" env -i PATH=${recipe.env.PATH ?? '/usr/bin:/bin'} HOME=/root sh -c ${shellQuote(recipe.check)}`,
    ...SLIMMING.cleanup,
  ].join('\n');
  const args = [
    `--variant=${DEBIAN.variant}`,
    '--format=directory',
    // merged /usr the debootstrap way (symlinks + usr-is-merged) instead of pulling usrmerge and a full perl.
    `--hook-dir=${MERGED_USR_HOOK_DIR}`,
    ...SLIMMING.dpkgPathExclude.map((x) => `--dpkgopt=path-exclude=${x}`),
    ...SLIMMING.dpkgPathInclude.map((x) => `--dpkgopt=path-include=${x}`),
    `--customize-hook=${customize}`,
  ];
  if (recipe.packages.length > 0) args.push(`--include=${recipe.packages.join(',')}`);
  args.push(suite, req.targetDir, ...sources);
  return args;
}

const mmdebstrap: Bootstrapper = async (req) => {
  if (!existsSync(MERGED_USR_HOOK_DIR)) {
    throw new Error(`mmdebstrap is not installed (missing ${MERGED_USR_HOOK_DIR}); run scripts/setup.sh`);
  }
  const tag = `[${req.recipe.short}]`;
  await runLogged('mmdebstrap', mmdebstrapArgs(req), {
    signal: req.signal,
    onLine: (line) => req.log.debug?.(`${tag} ${line}`),
    what: `mmdebstrap (${req.recipe.short})`,
  });
};

// ---------------------------------------------------------------------------------------------------------------
// ext4

async function buildExt4(ctx: BuildContext, recipe: ImageRecipe, p: ImagePaths): Promise<number> {
  const { diskBytes, inodes } = await measureDisk(p.rootfsDir);
  const MiB = 1024 * 1024;
  // Room for metadata (256-byte inodes, bitmaps, journal) and a little slack; the image is sparse anyway.
  const sizeMiB = Math.ceil((diskBytes * 1.15 + inodes * 512 + 64 * MiB) / MiB);
  const tmp = path.join(p.dir, `.rootfs.ext4.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await runLogged(
      'mkfs.ext4',
      // 4 KiB blocks (mke2fs would pick 1 KiB for a "small" fs), no reserved blocks, enough inodes; sparse file.
      ['-q', '-F', '-b', '4096', '-m', '0', '-N', String(Math.ceil(inodes * 1.25) + 4096),
        '-L', `kindling-${recipe.short}`, '-d', p.rootfsDir, tmp, `${sizeMiB}M`],
      { signal: ctx.signal, what: 'mkfs.ext4' },
    );
    await fs.rename(tmp, p.ext4File);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  return (await fs.stat(p.ext4File)).size;
}

// ---------------------------------------------------------------------------------------------------------------
// Docker

async function pingDocker(docker: Dockerode, timeoutMs = 3000): Promise<string | null> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    // dockerode's ping accepts { abortSignal } (its typings do not say so).
    const ping = docker.ping.bind(docker) as unknown as (o: { abortSignal: AbortSignal }) => Promise<unknown>;
    await ping({ abortSignal: ac.signal });
    return null;
  } catch (err) {
    return ac.signal.aborted ? `no answer within ${timeoutMs} ms` : (err as Error).message;
  } finally {
    clearTimeout(timer);
  }
}

interface ExistingImage {
  id: string;
  label: string | undefined;
  sizeBytes: number;
}

async function inspectImage(docker: Dockerode, ref: string): Promise<ExistingImage | null> {
  try {
    const info = await docker.getImage(ref).inspect();
    return { id: info.Id, label: info.Config?.Labels?.[RECIPE_LABEL], sizeBytes: info.Size };
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return null;
    throw err;
  }
}

/** `docker import` of the rootfs as a tar stream (GNU tar, numeric owners) through the engine API. */
async function importRootfs(
  docker: Dockerode,
  recipe: ImageRecipe,
  hash: string,
  rootfsDir: string,
  signal: AbortSignal,
): Promise<string> {
  const ac = new AbortController();
  const onAbort = (): void => ac.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  const tar = spawn('tar', ['--numeric-owner', '--one-file-system', '-C', rootfsDir, '-cf', '-', '.'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let tarErr = '';
  tar.stderr.on('data', (d: Buffer) => (tarErr = (tarErr + d.toString()).slice(-2000)));
  const tarDone = new Promise<void>((resolve, reject) => {
    tar.on('error', (e) => {
      ac.abort(e);
      reject(e);
    });
    tar.on('close', (code, sig) => {
      if (code === 0) resolve();
      else {
        const e = new Error(`tar of ${rootfsDir} failed (${code ?? sig}): ${tarErr.trim()}`);
        ac.abort(e);
        reject(e);
      }
    });
  });
  tarDone.catch(() => {}); // observed below; avoid an unhandled rejection while the import is still running
  const changes = [
    ...Object.entries(recipe.env).map(([k, v]) => `ENV ${k}=${v}`),
    'WORKDIR /work',
    `LABEL ${RECIPE_LABEL}=${hash}`,
    `LABEL ${IMAGE_LABEL}=${recipe.short}`,
    'CMD ["bash"]',
  ];
  try {
    const stream = await docker.importImage(tar.stdout, {
      repo: recipe.name,
      tag: recipe.tag,
      changes,
      message: `kindling recipe ${recipe.short} ${hash}`,
      abortSignal: ac.signal,
    });
    const output = await new Promise<Array<Record<string, unknown>>>((resolve, reject) => {
      docker.modem.followProgress(stream, (err: Error | null, out: Array<Record<string, unknown>>) =>
        err ? reject(err) : resolve(out),
      );
    });
    await tarDone;
    const failed = output.find((o) => o.error || o.errorDetail);
    if (failed) throw new Error(`docker import of ${imageRef(recipe)} failed: ${String(failed.error ?? JSON.stringify(failed.errorDetail))}`);
  } catch (err) {
    if (tar.exitCode === null) tar.kill('SIGKILL');
    // The original error wins, but a tar failure explains an aborted upload better than "aborted".
    const tarFailure = await tarDone.then(() => null, (e: unknown) => e);
    throw tarFailure instanceof Error && ac.signal.aborted ? tarFailure : err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  const after = await inspectImage(docker, imageRef(recipe));
  if (!after || after.label !== hash) {
    throw new Error(`docker import of ${imageRef(recipe)} finished but the image does not carry ${RECIPE_LABEL}=${hash}`);
  }
  return after.id;
}

async function removeOldImage(docker: Dockerode, id: string, log: ImageLog): Promise<void> {
  try {
    const info = await docker.getImage(id).inspect();
    if (!info.Config?.Labels?.[RECIPE_LABEL]) return; // never touch an image we did not make
    await docker.getImage(id).remove();
    log.debug?.(`removed superseded image ${id}`);
  } catch (err) {
    log.debug?.(`kept superseded image ${id}: ${(err as Error).message}`); // e.g. a container still uses it
  }
}

// ---------------------------------------------------------------------------------------------------------------
// listImages

export interface ImageInfo {
  name: string;
  short: ImageShortName;
  ref: string;
  runtime: string;
  rootfsDir: string;
  /** The stamp matches the current recipe and rootfs/ exists. */
  rootfsReady: boolean;
  dockerImageId: string | null;
  /** The Docker image exists and carries the current recipe hash. */
  dockerReady: boolean;
  /** Rootfs size from the stamp (null when never built). */
  sizeBytes: number | null;
  dockerSizeBytes: number | null;
  /** Hash of the current recipe (what a build would produce). */
  recipeHash: string;
  /** Hash recorded in recipe.json, if any (differs from recipeHash when the rootfs is stale). */
  rootfsRecipeHash: string | null;
  /** Hash on the Docker image's label, if any. */
  dockerRecipeHash: string | null;
  ext4File: string | null;
  builtAt: string | null;
  /** Versions of the recipe's own packages as installed. */
  packages: Record<string, string>;
  /** Why dockerReady is false when the engine could not be asked. */
  dockerError?: string;
}

export interface ListImagesOptions {
  imagesDir: string;
  /** Without a client the docker fields are null/false. */
  docker?: Dockerode;
}

export async function listImages(opts: ListImagesOptions): Promise<ImageInfo[]> {
  let dockerError: string | undefined;
  if (opts.docker) dockerError = (await pingDocker(opts.docker)) ?? undefined;
  const docker = opts.docker && dockerError === undefined ? opts.docker : undefined;
  return Promise.all(
    IMAGE_SHORT_NAMES.map(async (short) => {
      const recipe = IMAGE_RECIPES[short];
      const hash = recipeHash(recipe);
      const p = imagePaths(opts.imagesDir, short);
      const stamp = await readStamp(p.stampFile);
      const rootfsReady = stamp?.recipeHash === hash && (await isDir(p.rootfsDir));
      let img: ExistingImage | null = null;
      let err = dockerError;
      if (docker) {
        try {
          img = await inspectImage(docker, imageRef(recipe));
        } catch (e) {
          err = (e as Error).message;
        }
      }
      const info: ImageInfo = {
        name: recipe.name,
        short,
        ref: imageRef(recipe),
        runtime: recipe.runtime,
        rootfsDir: p.rootfsDir,
        rootfsReady,
        dockerImageId: img?.id ?? null,
        dockerReady: img?.label === hash,
        sizeBytes: stamp?.sizeBytes ?? null,
        dockerSizeBytes: img?.sizeBytes ?? null,
        recipeHash: hash,
        rootfsRecipeHash: stamp?.recipeHash ?? null,
        dockerRecipeHash: img?.label ?? null,
        ext4File: stamp?.ext4 && (await fileSize(p.ext4File)) !== null ? p.ext4File : null,
        builtAt: stamp?.builtAt ?? null,
        packages: Object.fromEntries(
          recipe.packages.filter((n) => stamp?.packages[n]).map((n) => [n, stamp?.packages[n] as string]),
        ),
      };
      if (err !== undefined && opts.docker) info.dockerError = err;
      return info;
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// helpers

async function readStamp(file: string): Promise<ImageStamp | null> {
  try {
    const s = JSON.parse(await fs.readFile(file, 'utf8')) as Partial<ImageStamp>;
    return typeof s.recipeHash === 'string' ? (s as ImageStamp) : null;
  } catch {
    return null;
  }
}

async function writeStamp(file: string, stamp: ImageStamp): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  const fh = await fs.open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(JSON.stringify(stamp, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

/** One builder per image directory at a time; a lock left by a dead process is taken over. */
async function acquireLock(lockFile: string, short: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await fs.open(lockFile, 'wx', 0o644);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => fs.rm(lockFile, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number.parseInt(await fs.readFile(lockFile, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
        throw new Error(`image ${short} is being built by another process (pid ${pid}, lock ${lockFile})`);
      }
      if (pid === process.pid) throw new Error(`image ${short} is already being built by this process`);
      await fs.rm(lockFile, { force: true });
    }
  }
  throw new Error(`could not lock ${lockFile}`);
}

/** Removes `.build-*`, `.old-*` and `*.tmp` left by an interrupted build (called with the lock held). */
async function removeLeftovers(dir: string, log: ImageLog): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    if (name.startsWith('.build-') || name.startsWith('.old-') || name.endsWith('.tmp')) {
      log.info(`removing leftover ${path.join(dir, name)} from an interrupted build`);
      await safeRemove(path.join(dir, name), log);
    }
  }
}

/**
 * rm -rf that never descends into a mount point: an interrupted mmdebstrap (root mode) can leave /proc, /sys or /dev
 * mounted inside its target, and deleting through a bind mount of the host's /dev would be a disaster. Mounts found
 * below `target` are lazily unmounted first; if any remain, nothing is deleted.
 */
export async function safeRemove(target: string, log: ImageLog = silentLog): Promise<void> {
  let real: string;
  try {
    real = await fs.realpath(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  let mounts = await mountsUnder(real);
  if (mounts.length > 0) {
    for (const m of mounts.sort((a, b) => b.length - a.length)) {
      log.warn(`unmounting leftover mount ${m}`);
      await runLogged('umount', ['-l', m], { what: `umount ${m}` }).catch(() => {});
    }
    mounts = await mountsUnder(real);
    if (mounts.length > 0) throw new Error(`refusing to delete ${real}: still mounted below it: ${mounts.join(', ')}`);
  }
  await fs.rm(real, { recursive: true, force: true });
}

async function mountsUnder(dir: string): Promise<string[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const mp = field.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    if (mp === dir || mp.startsWith(dir + '/')) out.push(mp);
  }
  return out;
}

/** Parses var/lib/dpkg/status for installed packages. */
export async function readInstalledPackages(rootfsDir: string): Promise<Record<string, string>> {
  const text = await fs.readFile(path.join(rootfsDir, 'var/lib/dpkg/status'), 'utf8').catch(() => '');
  const out: Record<string, string> = {};
  for (const block of text.split(/\n\n+/)) {
    const pkg = /^Package: (.+)$/m.exec(block)?.[1];
    const ver = /^Version: (.+)$/m.exec(block)?.[1];
    const status = /^Status: (.+)$/m.exec(block)?.[1];
    if (pkg && ver && status?.endsWith(' installed')) out[pkg] = ver;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Apparent size (regular files + symlinks, hard links once) and entry count, without crossing mount points. */
async function measureTree(root: string): Promise<{ sizeBytes: number; fileCount: number }> {
  const { sizeBytes, entries } = await walk(root);
  return { sizeBytes, fileCount: entries };
}

async function measureDisk(root: string): Promise<{ diskBytes: number; inodes: number }> {
  const { diskBytes, entries } = await walk(root);
  return { diskBytes, inodes: entries };
}

async function walk(root: string): Promise<{ sizeBytes: number; diskBytes: number; entries: number }> {
  const rootDev = (await fs.lstat(root)).dev;
  const seen = new Set<string>();
  let sizeBytes = 0;
  let diskBytes = 0;
  let entries = 0;
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop() as string;
    for (const name of await fs.readdir(dir)) {
      const full = path.join(dir, name);
      const st = await fs.lstat(full);
      entries++;
      if (st.isDirectory()) {
        diskBytes += 4096;
        if (st.dev === rootDev) stack.push(full);
      } else if (st.isFile() || st.isSymbolicLink()) {
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (seen.has(key)) continue;
          seen.add(key);
        }
        sizeBytes += st.size;
        diskBytes += st.isFile() || st.size > 59 ? Math.ceil(st.size / 4096) * 4096 : 0;
      }
    }
  }
  return { sizeBytes, diskBytes, entries };
}

async function runLogged(
  cmd: string,
  args: string[],
  opts: { signal?: AbortSignal; onLine?: (line: string) => void; what: string },
): Promise<void> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const onData = (buf: Buffer, carry: { s: string }): void => {
    carry.s += buf.toString();
    const lines = carry.s.split('\n');
    carry.s = lines.pop() ?? '';
    for (const l of lines) {
      opts.onLine?.(l);
      tail.push(l);
      if (tail.length > 40) tail.shift();
    }
  };
  const out = { s: '' };
  const err = { s: '' };
  child.stdout.on('data', (b: Buffer) => onData(b, out));
  child.stderr.on('data', (b: Buffer) => onData(b, err));
  const onAbort = (): void => {
    child.kill('SIGTERM');
    setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 10_000).unref();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c, s) => resolve([c, s]));
    });
    for (const rest of [out.s, err.s]) if (rest) tail.push(rest);
    if (opts.signal?.aborted) {
      const reason: unknown = opts.signal.reason;
      throw reason instanceof Error ? reason : new Error(`${opts.what} aborted`);
    }
    if (code !== 0) {
      throw new Error(`${opts.what} exited with ${code ?? sig}:\n${tail.slice(-15).join('\n')}`);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} not found: run scripts/setup.sh`);
    throw e;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function fileSize(p: string): Promise<number | null> {
  try {
    return (await fs.stat(p)).size;
  } catch {
    return null;
  }
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
