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
 * This file runs one build per image through those steps; the parts live beside it: rootfs.ts (mmdebstrap, ext4),
 * docker-import.ts, store.ts (paths, stamps, locks, listing) and files.ts (removal, measuring, processes, sizes).
 *
 * No process.env is read here: the caller passes imagesDir, the Docker client and the mirrors.
 */
import * as fs from 'node:fs/promises';
import path from 'node:path';
import type Dockerode from 'dockerode';
import { DEBIAN, imageRef, recipeHash, resolveImageNames, type ImageRecipe } from './recipes.js';
import { mapLimit, fmtBytes, fmtMs, fileSize, isDir, silentLog, type ImageLog } from './files.js';
import { importRootfs, inspectImage, pingDocker, removeOldImage } from './docker-import.js';
import { acquireLock, imagePaths, readStamp, removeLeftovers, writeStamp } from './store.js';
import { DEFAULT_NPM_REGISTRY } from './npm-binaries.js';
import { EXT4_FORMAT, buildExt4, buildRootfs, mmdebstrap, type Bootstrapper, type RootfsBuildContext } from './rootfs.js';

// The builder's parts keep their names available here, for the importers of this module.
export { IMAGE_LABEL, RECIPE_LABEL } from './docker-import.js';
export { DEFAULT_IMAGES_DIR, imagePaths, listImages, type ImageInfo, type ImagePaths, type ImageStamp, type ListImagesOptions } from './store.js';
export { fmtBytes, readInstalledPackages, safeRemove, type ImageLog } from './files.js';
export { mmdebstrapArgs, type BootstrapRequest, type Bootstrapper } from './rootfs.js';

export interface BuildImagesOptions {
  imagesDir: string;
  /** Short names, Docker names or runtime names; all images when empty/absent. */
  names?: readonly string[];
  /** Recipes to build instead of `names` (custom images, see custom.ts). */
  recipes?: readonly ImageRecipe[];
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
  /** The npm registry of images with npmBinaries (deno, bun). Default https://registry.npmjs.org. */
  npmRegistry?: string;
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
  short: string;
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
  const recipes = opts.recipes ?? resolveImageNames(opts.names ?? []);
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
    npmRegistry: opts.npmRegistry ?? DEFAULT_NPM_REGISTRY,
    downloadsDir: path.join(imagesDir, '.downloads'),
    bootstrapTimeoutMs: opts.bootstrapTimeoutMs ?? 20 * 60_000,
    log,
    signal: opts.signal ?? new AbortController().signal,
    bootstrap: opts.bootstrap ?? mmdebstrap,
  };
  const results = await mapLimit(recipes, Math.max(1, opts.concurrency ?? 2), (r) => buildOne(ctx, r));
  if (results.some((r) => r.error)) throw new ImageBuildError(results);
  return results;
}

interface BuildContext extends RootfsBuildContext {
  imagesDir: string;
  force: boolean;
  docker: Dockerode | undefined;
  dockerMissing: DockerStatus;
  ext4: boolean;
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

