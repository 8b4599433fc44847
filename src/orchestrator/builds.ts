/**
 * Dependency builds of node bundles: a bundle with package.json + package-lock.json gets `npm ci --omit=dev
 * --ignore-scripts` run as an ordinary execution (the same executors, limits and accounting as any other) in a build
 * sandbox that sees the bundle read-only at /work and the operator's npm read-only at NPM_MOUNT. The installed tree
 * leaves the sandbox as a tar on stdout and goes through the same guard and unprivileged unpack as an uploaded bundle,
 * into the layer store under the hash of (lockfile, runtime image, npm version): one build per lockfile, shared
 * read-only at /work/node_modules by every version that has it.
 *
 * Install scripts are off: a package's postinstall would run with the build's network and write into a layer that
 * every function with the same lockfile then runs; packages that need a compiled addon are not supported.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KindlingError } from '../core/errors.js';
import type { FunctionLayer } from '../store/store.js';
import type { BundleStore } from './bundles.js';
import type { ExecutionService, TenantScope } from './execution-service.js';

/** Where the operator's npm is bound inside the build sandbox (a new top-level directory: nothing of the image hides). */
export const NPM_MOUNT = '/kindling-npm';
/** Where a layer is seen by the function: node resolves packages from the bundle's directory upwards. */
export const LAYER_MOUNT = '/work/node_modules';
/** Where the operator's extra CA bundle is bound inside the build sandbox. */
export const CA_MOUNT = '/kindling-ca.pem';

export const DEFAULT_BUILD_TIMEOUT_MS = 300_000;
export const DEFAULT_BUILD_MEMORY_MB = 1024;
export const DEFAULT_BUILD_CPUS = 1;
export const DEFAULT_BUILD_DISK_MB = 1024;
export const DEFAULT_BUILD_REGISTRY = 'https://registry.npmjs.org/';
/** Bytes of build log kept for the error (the end of it: npm prints its error last). */
const LOG_KEPT_BYTES = 64 * 1024;

export interface BuilderOptions {
  executionService: Pick<ExecutionService, 'executeRaw'>;
  /** Where layers are kept (a BundleStore over <data-dir>/layers, keyed by lockfile hash). */
  layers: BundleStore;
  /** Host directory of the npm package run by builds (its bin/npm-cli.js), e.g. /usr/lib/node_modules/npm. */
  npmDir: string;
  registry?: string;
  timeoutMs?: number;
  memoryMb?: number;
  cpus?: number;
  diskMb?: number;
  /**
   * A PEM bundle of CAs the build trusts besides node's own (NODE_EXTRA_CA_CERTS), bound read-only at CA_MOUNT: a
   * registry mirror or a TLS-inspecting proxy with a private CA. Absent: node's built-in roots only.
   */
  caFile?: string;
  /** The image builds run in (the node runtime's). */
  image?: string;
}

export interface BuildResult {
  layer: FunctionLayer;
  log: string;
}

export class DependencyBuilder {
  private npmVersion: string | null = null;
  /** Builds in flight by layer hash: two deploys of the same lockfile build once. */
  private readonly running = new Map<string, Promise<BuildResult>>();

  constructor(private readonly options: BuilderOptions) {}

  /** Whether a bundle needs a build: it has both package.json and package-lock.json at its root. */
  async needsBuild(bundleDir: string): Promise<boolean> {
    const [pkg, lock] = await Promise.all([readFile(join(bundleDir, 'package.json')).catch(() => null), readFile(join(bundleDir, 'package-lock.json')).catch(() => null)]);
    return pkg !== null && lock !== null;
  }

  /** The layer of the bundle at `bundleDir` (node runtime): reused when its lockfile was built before, else built now. */
  async layerFor(bundleDir: string, tenant: TenantScope): Promise<BuildResult> {
    const lock = await readFile(join(bundleDir, 'package-lock.json'));
    const npmVersion = await this.npm();
    const image = this.options.image ?? 'kindling/node';
    const key = createHash('sha256').update(lock).update('\0').update(image).update('\0').update(npmVersion).digest('hex');
    const inFlight = this.running.get(key);
    if (inFlight !== undefined) return inFlight.then((r) => ({ ...r, layer: { ...r.layer, reused: true, buildMs: 0 } }));
    if (await this.options.layers.has(key)) {
      const bytes = (await readFile(join(this.options.layers.pathOf(key), '..', `.${key}.bytes`), 'utf8').catch(() => '0')).trim();
      return { layer: { sha256: key, bytes: Number(bytes) || 0, reused: true, buildMs: 0 }, log: '' };
    }
    const build = this.build(bundleDir, key, tenant);
    this.running.set(key, build);
    try {
      return await build;
    } finally {
      this.running.delete(key);
    }
  }

  /** Unpins a layer `layerFor` built (its version was stored, or the deploy failed). */
  release(sha256: string, result: BuildResult): void {
    if (!result.layer.reused) this.options.layers.release(sha256);
  }

  private async build(bundleDir: string, key: string, tenant: TenantScope): Promise<BuildResult> {
    const started = Date.now();
    const npm = `node ${NPM_MOUNT}/bin/npm-cli.js`;
    // npm's own output goes to stderr (the build log); stdout carries only the tar of node_modules.
    const script = [
      'set -e',
      'mkdir -p /tmp/build/node_modules && cp /work/package.json /work/package-lock.json /tmp/build/ && cd /tmp/build',
      `${npm} ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=http 1>&2`,
      // Records of one block: GNU tar on the host stops reading at the end-of-archive blocks, and padding after them
      // would then meet a closed pipe.
      'tar -b 1 -cf - -C /tmp/build/node_modules .',
    ].join('\n');
    // stdout (the tar) goes to a file first and is unpacked once the build succeeded: a failed build leaves nothing
    // half-unpacked, and the unpack reads a complete archive at its own pace. Its size is bounded by the build's disk.
    const spool = await mkdtemp(join(tmpdir(), 'kindling-build-'));
    const archive = join(spool, 'layer.tar');
    try {
      const sink = createWriteStream(archive);
      let raw;
      try {
        raw = await this.options.executionService.executeRaw(
          {
            image: this.options.image ?? 'kindling/node',
            command: ['bash', '-c', script],
            network: 'egress',
            timeoutMs: this.options.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS,
            memoryMb: this.options.memoryMb ?? DEFAULT_BUILD_MEMORY_MB,
            cpus: this.options.cpus ?? DEFAULT_BUILD_CPUS,
            diskMb: this.options.diskMb ?? DEFAULT_BUILD_DISK_MB,
            outputBytes: LOG_KEPT_BYTES,
            env: {
              HOME: '/tmp/home',
              npm_config_cache: '/tmp/npm-cache',
              npm_config_registry: this.options.registry ?? DEFAULT_BUILD_REGISTRY,
              npm_config_update_notifier: 'false',
              NODE_OPTIONS: '--no-warnings',
              ...(this.options.caFile === undefined ? {} : { NODE_EXTRA_CA_CERTS: CA_MOUNT }),
            },
          },
          {
            roBinds: [
              { source: bundleDir, target: '/work' },
              { source: this.options.npmDir, target: NPM_MOUNT },
              ...(this.options.caFile === undefined ? [] : [{ source: this.options.caFile, target: CA_MOUNT }]),
            ],
            io: { stdin: { kind: 'none' }, stdout: { kind: 'sink', sink, keepBytes: 0 } },
            tenant,
          },
        );
      } finally {
        await new Promise<void>((resolve) => sink.end(resolve));
      }
      const log = raw.stderr.toString('utf8');
      if (raw.result.exitCode !== 0) {
        const why = raw.result.timedOut ? `the build ran out of time (--build-timeout-ms ${this.options.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS})` : raw.result.oomKilled ? `the build ran out of memory (--build-memory-mb ${this.options.memoryMb ?? DEFAULT_BUILD_MEMORY_MB})` : `npm ci exited with ${raw.result.exitCode}`;
        const tail = lastLines(log, 8);
        throw new KindlingError('BUILD_FAILED', `installing the bundle's dependencies failed: ${why}; fix package.json / package-lock.json (npm install --package-lock-only regenerates the lockfile) and deploy again. npm said:\n${tail}`, { details: { log: log.slice(-LOG_KEPT_BYTES), exitCode: raw.result.exitCode, timedOut: raw.result.timedOut } });
      }
      const info = await this.options.layers.ingest(createReadStream(archive), { key });
      await writeFile(join(this.options.layers.pathOf(key), '..', `.${key}.bytes`), String(info.bytes)).catch(() => undefined);
      return { layer: { sha256: key, bytes: info.bytes, reused: false, buildMs: Date.now() - started }, log };
    } finally {
      await rm(spool, { recursive: true, force: true });
    }
  }

  private async npm(): Promise<string> {
    if (this.npmVersion === null) {
      const pkg = JSON.parse(await readFile(join(this.options.npmDir, 'package.json'), 'utf8')) as { version?: string };
      this.npmVersion = pkg.version ?? 'unknown';
    }
    return this.npmVersion;
  }
}

function lastLines(text: string, count: number): string {
  return text.trimEnd().split('\n').slice(-count).join('\n').slice(-2000);
}
