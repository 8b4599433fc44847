/**
 * The root filesystem of a runtime image: bootstrapped by mmdebstrap (or a test's fake) into a build dir, verified,
 * measured, swapped into place and stamped; and the ext4 file made from it for the microvm executor.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../executors/shared/process.js';
import { BUILDER_VERSION, COMMON_CUSTOMIZE, DEBIAN, SLIMMING, type ImageRecipe, type NpmBinary } from './recipes.js';
import { fetchNpmTarball } from './npm-binaries.js';
import { exists, isDir, measureDisk, measureTree, readInstalledPackages, runLogged, safeRemove, type ImageLog } from './files.js';
import { writeStamp, type ImagePaths, type ImageStamp } from './store.js';

const MERGED_USR_HOOK_DIR = '/usr/share/mmdebstrap/hooks/merged-usr';
/** Bump when buildExt4's mkfs options change, so cached ext4 files are rebuilt. */
export const EXT4_FORMAT = 1;

export interface BootstrapRequest {
  recipe: ImageRecipe;
  /** Does not exist yet; the bootstrapper creates it. */
  targetDir: string;
  suite: string;
  mirror: string;
  securityMirror: string;
  /** The recipe's npmBinaries, each with its verified tarball on the host (same order); none when it has none. */
  binaries?: readonly FetchedBinary[];
  log: ImageLog;
  signal: AbortSignal;
}
/** A recipe's npm binary and the path of its verified tarball on the host. */
export interface FetchedBinary {
  binary: NpmBinary;
  tarball: string;
}
/** Produces a complete root filesystem in targetDir (mmdebstrap by default; a fake in unit tests). */
export type Bootstrapper = (req: BootstrapRequest) => Promise<void>;

/** What building a rootfs needs of the build (the mirrors, the bootstrapper, the time limit, log and abort). */
export interface RootfsBuildContext {
  mirror: string;
  securityMirror: string;
  /** The npm registry npmBinaries come from, and where their verified tarballs are kept. */
  npmRegistry: string;
  downloadsDir: string;
  bootstrapTimeoutMs: number;
  log: ImageLog;
  signal: AbortSignal;
  bootstrap: Bootstrapper;
}

export async function buildRootfs(ctx: RootfsBuildContext, recipe: ImageRecipe, hash: string, p: ImagePaths): Promise<ImageStamp> {
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
    const binaries: FetchedBinary[] = [];
    for (const binary of recipe.npmBinaries ?? []) {
      ctx.log.info(`[${recipe.short}] fetching ${binary.package}@${binary.version}`);
      binaries.push({ binary, tarball: await fetchNpmTarball(binary, { registry: ctx.npmRegistry, cacheDir: ctx.downloadsDir, signal: ac.signal }) });
    }
    await ctx.bootstrap({
      recipe,
      binaries,
      targetDir: buildDir,
      suite: recipe.suite ?? DEBIAN.suite,
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

/** The mmdebstrap command line for a recipe (exported for tests and for humans debugging a build). */
export function mmdebstrapArgs(req: Pick<BootstrapRequest, 'recipe' | 'targetDir' | 'suite' | 'mirror' | 'securityMirror' | 'binaries'>): string[] {
  const { recipe, suite } = req;
  const comps = DEBIAN.components.join(' ');
  const sources = [
    ...DEBIAN.suites.map((s) => `deb ${req.mirror} ${s.replace('{suite}', suite)} ${comps}`),
    `deb ${req.securityMirror} ${DEBIAN.securitySuite.replace('{suite}', suite)} ${comps}`,
  ];
  const customize = [
    'set -e',
    ...COMMON_CUSTOMIZE,
    // Before the check, which runs them: the one file of each tarball, extracted by the host's tar.
    ...(req.binaries ?? []).flatMap(({ binary, tarball }) => [
      `mkdir -p "$1"${shellQuote(path.posix.dirname(binary.target))}`,
      `tar -xzOf ${shellQuote(tarball)} ${shellQuote(binary.entry)} > "$1"${shellQuote(binary.target)}`,
      `chmod 0755 "$1"${shellQuote(binary.target)}`,
    ]),
    // A custom image's files: a tar checked when it was uploaded (no links out, no devices, no ..), owned by root.
    ...(recipe.files !== undefined
      ? [
          `mkdir -p "$1"${shellQuote(recipe.files.dest)}`,
          // Unpacked by the root's own tar inside it: every path, link included, resolves in the root, never the host's.
          `chroot "$1" tar -xf - -C ${shellQuote(recipe.files.dest)} --no-same-owner < ${shellQuote(recipe.files.tarball)}`,
          `chmod -R a+rX "$1"${shellQuote(recipe.files.dest)}`,
        ]
      : []),
    ...(recipe.setup !== undefined ? [`chroot "$1" env -i PATH=${recipe.env.PATH ?? '/usr/bin:/bin'} HOME=/root sh -c ${shellQuote(recipe.setup)}`] : []),
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
    // dpkg leaves /usr/share/man out (SLIMMING), but some maintainer scripts register man pages with update-alternatives,
    // which fails when the directory is missing (OpenJDK's). An empty directory: not part of the recipe hash, since
    // images built without it are the same.
    '--essential-hook=mkdir -p "$1/usr/share/man/man1"',
    `--customize-hook=${customize}`,
  ];
  if (recipe.packages.length > 0) args.push(`--include=${recipe.packages.join(',')}`);
  args.push(suite, req.targetDir, ...sources);
  return args;
}

export const mmdebstrap: Bootstrapper = async (req) => {
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


export async function buildExt4(ctx: RootfsBuildContext, recipe: ImageRecipe, p: ImagePaths): Promise<number> {
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

