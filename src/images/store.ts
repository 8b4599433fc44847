/**
 * The image store on disk: `${imagesDir}/${short}/` with its rootfs, ext4 file and `recipe.json` stamp, one builder per
 * image directory at a time (a lock file), leftovers of interrupted builds, and the listing of every image's state.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import type Dockerode from 'dockerode';
import { processAlive } from '../executors/shared/process.js';
import { IMAGE_RECIPES, IMAGE_SHORT_NAMES, imageRef, recipeHash, type ImageShortName } from './recipes.js';
import { inspectImage, pingDocker, type ExistingImage } from './docker-import.js';
import { fileSize, isDir, safeRemove, type ImageLog } from './files.js';

export const DEFAULT_IMAGES_DIR = '/var/lib/kindling/images';

export interface ImagePaths {
  dir: string;
  rootfsDir: string;
  stampFile: string;
  ext4File: string;
  lockFile: string;
}

export function imagePaths(imagesDir: string, short: string): ImagePaths {
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
  short: string;
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

export async function readStamp(file: string): Promise<ImageStamp | null> {
  try {
    const s = JSON.parse(await fs.readFile(file, 'utf8')) as Partial<ImageStamp>;
    return typeof s.recipeHash === 'string' ? (s as ImageStamp) : null;
  } catch {
    return null;
  }
}

export async function writeStamp(file: string, stamp: ImageStamp): Promise<void> {
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
export async function acquireLock(lockFile: string, short: string): Promise<() => Promise<void>> {
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
export async function removeLeftovers(dir: string, log: ImageLog): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    if (name.startsWith('.build-') || name.startsWith('.old-') || name.endsWith('.tmp')) {
      log.info(`removing leftover ${path.join(dir, name)} from an interrupted build`);
      await safeRemove(path.join(dir, name), log);
    }
  }
}


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

