import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readdir, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { pino } from 'pino';
import { LABEL_OWNER } from '../../src/executors/executor.js';
import { skipOrFail } from '../../src/executors/test-support.js';
import { startServer, type RunningServer, type ServerConfig } from '../../src/server.js';
import { waitFor as waitForCondition } from './wait.js';

export const IMAGES_DIR = '/var/lib/kindling/images';
export const docker = new Docker({ socketPath: '/var/run/docker.sock' });

export interface TestServer extends RunningServer {
  dataDir: string;
  ownerId: string;
  /** Against a cluster gateway (KINDLING_TEST_TARGET=cluster): the worker's owner id, which labels the sandboxes. */
  otherOwnerIds?: string[];
  /** Closes the server and removes its data dir. */
  stop(): Promise<void>;
}

/** The config of a test server with its own data dir (see startTestServer); nothing is made. */
export function testServerConfig(dataDir: string, overrides: Partial<ServerConfig> = {}): ServerConfig {
  return {
    host: '127.0.0.1',
    port: 0,
    imagesDir: IMAGES_DIR,
    executor: 'docker',
    enableExecutors: [],
    maxConcurrent: 32,
    maxQueued: 256,
    queueTimeoutMs: 30_000,
    maxBodyBytes: 8 * 1024 * 1024,
    maxStreamBytes: 256 * 1024 * 1024,
    shutdownTimeoutMs: 10_000,
    dockerSocketPath: '/var/run/docker.sock',
    // Nothing prewarmed by any executor (containers, sandbox launchers, VMs): tests that count resources see only
    // their own, and every execution takes the on-demand start path. Tests of prewarming set it.
    prewarmPerShape: 0,
    version: 'test',
    logger: pino({ level: process.env.KINDLING_TEST_LOG ?? 'silent' }),
    ...overrides,
    dataDir,
    // Generic sandboxes add idle sandboxes to every server; tests that count sandboxes would see them. Opt in.
    functionPools: { genericPerShape: 0, ...overrides.functionPools },
  };
}

/** A fresh data dir the sandbox's unprivileged uid can traverse (mkdtemp makes 0700). */
export async function newDataDir(): Promise<string> {
  const dataDir = await realpath(await mkdtemp(join(tmpdir(), 'kindling-test-')));
  await chmod(dataDir, 0o755);
  return dataDir;
}

/** The id a server labels its resources with: derived from its data dir. */
export const ownerIdOf = (dataDir: string): string => createHash('sha256').update(dataDir).digest('hex').slice(0, 16);

/**
 * The servers the end-to-end suites run against: one server (the default), or, with KINDLING_TEST_TARGET=cluster, a
 * cluster gateway (this process) in front of a worker process and a nats-server, so the same suites check that a
 * gateway answers as a single server does (scripts/test.sh runs them both ways).
 */
export const TEST_TARGET = process.env.KINDLING_TEST_TARGET === 'cluster' ? 'cluster' : 'single';

/** Starts a real server in-process on a free loopback port with its own data dir. */
export async function startTestServer(overrides: Partial<ServerConfig> = {}): Promise<TestServer> {
  // (The worker runs the sandbox executor: suites of other executors keep a server of their own.)
  if (TEST_TARGET === 'cluster' && overrides.cluster === undefined && overrides.executor === 'sandbox') return startClusterGateway(overrides);
  // A given data dir is reused (restart tests); otherwise a fresh one is made.
  const dataDir = overrides.dataDir ?? (await newDataDir());
  if (overrides.dataDir !== undefined) await chmod(dataDir, 0o755);
  const made = overrides.dataDir === undefined;
  const server = await startServer(testServerConfig(dataDir, overrides)).catch(async (error: unknown) => {
    // A server that refuses to start (a test of exactly that) must not leave its fresh data dir behind.
    if (made) await rm(dataDir, { recursive: true, force: true });
    throw error;
  });
  const ownerId = ownerIdOf(dataDir);
  return {
    ...server,
    dataDir,
    ownerId,
    async stop() {
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Containers the server of this owner id has now. */
export async function containersOf(ownerId: string): Promise<Docker.ContainerInfo[]> {
  return docker.listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_OWNER}=${ownerId}`] }) });
}

/** Why Docker tests cannot run here, or null when they can. */
export async function dockerUnavailableReason(): Promise<string | null> {
  const reason = await dockerProblem();
  return reason === null ? null : skipOrFail('docker', reason);
}

async function dockerProblem(): Promise<string | null> {
  try {
    await docker.ping();
  } catch (error) {
    return `the Docker engine is not reachable (${(error as Error).message}); scripts/setup.sh starts it`;
  }
  const images = await docker.listImages({ filters: JSON.stringify({ reference: ['kindling/*'] }) });
  const tags = new Set(images.flatMap((image) => image.RepoTags ?? []));
  const missing = ['base', 'python', 'node', 'rust'].map((name) => `kindling/${name}:latest`).filter((tag) => !tags.has(tag));
  return missing.length > 0 ? `images missing: ${missing.join(', ')}; run "kindling images build"` : null;
}

/** Why sandbox tests cannot run here, or null when they can (bubblewrap, cgroups, rootfs dirs). */
export async function sandboxUnavailableReason(): Promise<string | null> {
  const { SandboxExecutor } = await import('../../src/executors/sandbox/index.js');
  const probe = new SandboxExecutor({ imagesDir: IMAGES_DIR, stateDir: tmpdir(), ownerId: 'probe', instanceId: 'probe', prewarmPerShape: 0 });
  try {
    const status = await probe.probe();
    return status.ready ? null : skipOrFail('sandbox', `the sandbox executor is not usable here: ${status.reason}`);
  } finally {
    await probe.destroy();
  }
}

/** Why gvisor tests cannot run here (root, Debian's runsc), or null when they can. */
export async function gvisorUnavailableReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return skipOrFail('gvisor', 'the gvisor executor needs root (runsc and its cgroups)');
  if (!existsSync('/usr/bin/runsc')) return skipOrFail('gvisor', 'runsc is not installed (apt-get install runsc; scripts/setup.sh does)');
  return null;
}

/** Why microVM tests cannot run here (QEMU, kernel and agent assets, images), or null when they can. */
export async function microvmUnavailableReason(): Promise<string | null> {
  const { MicroVmExecutor } = await import('../../src/executors/microvm/index.js');
  const probe = new MicroVmExecutor({ driver: 'qemu', imagesDir: IMAGES_DIR, stateDir: tmpdir(), ownerId: `probe-${process.pid}`, instanceId: 'probe', prewarmPerShape: 0 });
  try {
    const status = await probe.probe();
    return status.ready ? null : skipOrFail('microvm', `microvm executor not ready: ${status.reason}`);
  } finally {
    await probe.destroy();
  }
}

/** waitFor of ./wait.ts with the e2e tests' argument order (polls every 100 ms: a condition here is a request). */
export async function waitFor(condition: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  await waitForCondition(condition, { timeoutMs, intervalMs: 100, what });
}

/**
 * Entries of the sandbox executor's run dirs (`runs`) or agent socket dirs (`agents`) of a data dir: they live in a
 * private mount dir per executor instance, `<dataDir>/run/sandbox/<random>/`.
 */
export async function sandboxDirs(dataDir: string, kind: 'runs' | 'agents'): Promise<string[]> {
  const base = join(dataDir, 'run', 'sandbox');
  const instances = await readdir(base).catch(() => [] as string[]);
  const lists = await Promise.all(instances.map((instance) => readdir(join(base, instance, kind)).catch(() => [] as string[])));
  return lists.flat().sort();
}

/**
 * A gateway in this process, a worker in its own process and a one-node nats-server (KINDLING_TEST_TARGET=cluster): the
 * gateway answers once it sees the worker. stop() ends all three and removes their data dirs.
 */
async function startClusterGateway(overrides: Partial<ServerConfig>): Promise<TestServer> {
  const { natsUnavailable, startNatsCluster } = await import('./nats-cluster.js');
  if (natsUnavailable) throw new Error(`KINDLING_TEST_TARGET=cluster needs nats-server: ${natsUnavailable}`);
  const { startNode } = await import('./cluster-node.js');
  const cleanups: (() => Promise<void>)[] = [];
  const owner = { after: (fn: () => Promise<void>) => void cleanups.push(fn) };
  // The worker and nats-server go with the gateway, whether it is closed (its data dir kept for a restart) or stopped.
  let stopping: Promise<void> | null = null;
  const stopOthers = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
    })());
  try {
    const nats = await startNatsCluster(owner, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const tag = Math.random().toString(36).slice(2, 8);
    // A short name: the worker's data dir (named after it) holds its sandboxes' unix sockets (107 bytes at most).
    const worker = await startNode(owner, natsUrl, 'worker', `w${tag}`);
    const server = await startTestServer({ ...overrides, cluster: { urls: [natsUrl], role: 'gateway', nodeId: `e2e-gateway-${tag}` } });
    try {
      await waitForCondition(async () => (await fetch(`${server.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the gateway to see the worker' });
    } catch (error) {
      await server.stop();
      throw error;
    }
    return {
      ...server,
      otherOwnerIds: [ownerIdOf(worker.dataDir)],
      async close() {
        await server.close();
        await stopOthers();
      },
      async stop() {
        await server.stop();
        await stopOthers();
      },
    };
  } catch (error) {
    await stopOthers();
    throw error;
  }
}
