/**
 * `kindling images build [names...]` and `kindling images list`. The caller (src/cli/index.ts) passes the defaults it
 * read from the environment; nothing here reads process.env.
 */
import { Command, InvalidArgumentError } from 'commander';
import type Dockerode from 'dockerode';
import {
  DEFAULT_IMAGES_DIR,
  ImageBuildError,
  buildImages,
  fmtBytes,
  listImages,
  type ImageBuildResult,
  type ImageInfo,
  type ImageLog,
} from '../images/builder.js';
import { DEFAULT_NPM_REGISTRY } from '../images/npm-binaries.js';
import { DEBIAN, IMAGE_SHORT_NAMES } from '../images/recipes.js';

export interface ImagesCommandsOptions {
  /** Default for --images-dir. Default /var/lib/kindling/images. */
  defaultImagesDir?: string;
  /** Default for --docker-socket. Default /var/run/docker.sock. */
  defaultDockerSocket?: string;
  /** Test seam: how a Docker client is made from --docker-socket. */
  createDocker?: (socketPath: string) => Dockerode;
  /** Where tables/JSON go (default process.stdout) and where progress goes (default process.stderr). */
  out?: { write(s: string): unknown };
  err?: { write(s: string): unknown };
}

interface BuildFlags {
  force?: boolean;
  imagesDir: string;
  docker: boolean;
  dockerSocket: string;
  ext4?: boolean;
  microvm?: boolean;
  concurrency: number;
  mirror: string;
  securityMirror: string;
  npmRegistry: string;
  verbose?: boolean;
}

interface ListFlags {
  json?: boolean;
  imagesDir: string;
  docker: boolean;
  dockerSocket: string;
}

export function registerImagesCommands(program: Command, opts: ImagesCommandsOptions = {}): Command {
  const imagesDir = opts.defaultImagesDir ?? DEFAULT_IMAGES_DIR;
  const socket = opts.defaultDockerSocket ?? '/var/run/docker.sock';
  // dockerode is loaded on use: `kindling --help` and the other commands need none of it.
  const createDocker = async (socketPath: string): Promise<Dockerode> => opts.createDocker?.(socketPath) ?? new (await import('dockerode')).default({ socketPath });
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;

  const images = program.command('images').description('build and inspect runtime images (rootfs dirs + Docker images)');

  images
    .command('build')
    .description('build runtime images from their Debian recipes (skips images whose recipe hash is unchanged)')
    .argument('[names...]', `images to build: ${IMAGE_SHORT_NAMES.join(', ')} (default: all)`)
    .option('-f, --force', 'rebuild even when the rootfs stamp and Docker label match the recipe')
    .option('--images-dir <dir>', 'where rootfs directories and stamps live', imagesDir)
    .option('--no-docker', 'build rootfs directories only, do not touch the Docker engine')
    .option('--docker-socket <path>', 'Docker engine socket', socket)
    .option('--ext4', 'also write <images-dir>/<name>/rootfs.ext4 (microvm executor)')
    .option('--microvm', 'implies --ext4; also build the microvm kernel, initramfs and agent disk (/var/lib/kindling/microvm)')
    .option('-j, --concurrency <n>', 'images built at the same time', parsePositiveInt, 2)
    .option('--mirror <url>', 'Debian mirror', DEBIAN.defaultMirror)
    .option('--security-mirror <url>', 'Debian security mirror', DEBIAN.defaultSecurityMirror)
    .option('--npm-registry <url>', 'npm registry of the deno and bun images (their pinned Linux builds)', DEFAULT_NPM_REGISTRY)
    .option('-v, --verbose', "show mmdebstrap's output")
    .action(async (names: string[], flags: BuildFlags) => {
      const t0 = Date.now();
      const stamp = (): string => `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s`;
      const log: ImageLog = {
        info: (m) => err.write(`${stamp()} ${m}\n`),
        warn: (m) => err.write(`${stamp()} warning: ${m}\n`),
        ...(flags.verbose ? { debug: (m: string) => err.write(`${stamp()}   ${m}\n`) } : {}),
      };
      let results: ImageBuildResult[];
      try {
        results = await buildImages({
          imagesDir: flags.imagesDir,
          names,
          force: flags.force ?? false,
          ...(flags.docker ? { docker: await createDocker(flags.dockerSocket) } : {}),
          ext4: (flags.ext4 ?? false) || (flags.microvm ?? false),
          concurrency: flags.concurrency,
          mirror: flags.mirror,
          securityMirror: flags.securityMirror,
          npmRegistry: flags.npmRegistry,
          log,
        });
      } catch (e) {
        if (e instanceof ImageBuildError) {
          out.write(formatBuildResults(e.results));
          err.write(`error: ${e.message}\n`);
        } else {
          err.write(`error: ${(e as Error).message}\n`);
        }
        process.exitCode = 1;
        return;
      }
      out.write(formatBuildResults(results));
      if (flags.microvm) {
        try {
          const { buildMicroVmAssets } = await import('../executors/microvm/assets.js');
          await buildMicroVmAssets({ log: (m) => err.write(`${stamp()} ${m}\n`) });
        } catch (e) {
          err.write(`error: microvm assets: ${(e as Error).message}\n`);
          process.exitCode = 1;
          return;
        }
      }
      err.write(`${stamp()} done\n`);
    });

  images
    .command('list')
    .description('show each runtime image: rootfs and Docker state, sizes, recipe hash')
    .option('--json', 'print JSON')
    .option('--images-dir <dir>', 'where rootfs directories and stamps live', imagesDir)
    .option('--no-docker', 'do not ask the Docker engine')
    .option('--docker-socket <path>', 'Docker engine socket', socket)
    .action(async (flags: ListFlags) => {
      const infos = await listImages({
        imagesDir: flags.imagesDir,
        ...(flags.docker ? { docker: await createDocker(flags.dockerSocket) } : {}),
      });
      if (flags.json) {
        out.write(JSON.stringify(infos, null, 2) + '\n');
        return;
      }
      out.write(
        table(
          ['IMAGE', 'ROOTFS', 'DOCKER', 'ROOTFS SIZE', 'DOCKER SIZE', 'RECIPE', 'PACKAGES'],
          infos.map((i) => [
            i.name,
            i.rootfsReady ? 'ready' : i.rootfsRecipeHash ? 'stale' : 'missing',
            dockerState(i, flags.docker),
            i.sizeBytes === null ? '-' : fmtBytes(i.sizeBytes),
            i.dockerSizeBytes === null ? '-' : fmtBytes(i.dockerSizeBytes),
            i.recipeHash.slice(0, 12),
            Object.entries(i.packages).map(([n, v]) => `${n}=${v}`).join(' ') || '-',
          ]),
        ),
      );
      const unreachable = infos.find((i) => i.dockerError);
      if (unreachable) err.write(`warning: docker engine not reachable: ${unreachable.dockerError}\n`);
    });

  return images;
}

export function formatBuildResults(results: readonly ImageBuildResult[]): string {
  return table(
    ['IMAGE', 'ROOTFS', 'DOCKER', 'EXT4', 'SIZE', 'TIME', 'RECIPE'],
    results.map((r) => [
      r.name,
      r.rootfs,
      r.docker,
      r.ext4,
      r.sizeBytes === null ? '-' : fmtBytes(r.sizeBytes),
      `${(r.durationMs / 1000).toFixed(1)}s`,
      r.recipeHash.slice(0, 12),
    ]),
  );
}

function dockerState(i: ImageInfo, asked: boolean): string {
  if (!asked) return 'not checked';
  if (i.dockerReady) return 'ready';
  if (i.dockerError) return 'unreachable';
  if (i.dockerRecipeHash) return 'stale';
  return i.dockerImageId ? 'unlabelled' : 'missing';
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}

function parsePositiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}
