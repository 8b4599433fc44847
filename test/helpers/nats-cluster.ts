/**
 * A real nats-server JetStream cluster on loopback for tests (and the bench): N nodes (3 for the replication tests, 1
 * for quick ones), each with its own config file, store dir and free ports for clients, routes and monitoring. Start-up
 * waits on observable state (every node's /healthz says JetStream is current, which needs an elected meta leader), not
 * on a sleep. Nodes can be killed with any signal and restarted on the same ports and store dir. Everything started
 * here is stopped by PID and its dirs removed when the owner's `after` hook runs, also when the test fails, and every
 * node still alive is SIGKILLed if the test process exits without running it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { skipOrFail } from '../../src/executors/test-support.js';

export const NATS_SERVER = '/usr/sbin/nats-server';

/**
 * Why the cluster tests cannot run here, or false: Debian's nats-server is missing (scripts/setup.sh installs it). In
 * CI (KINDLING_TEST_REQUIRE names `nats`) that is a failure, never a skip.
 */
export const natsUnavailable: string | false = existsSync(NATS_SERVER) ? false : skipOrFail('nats', `${NATS_SERVER} is missing (Debian: nats-server; scripts/setup.sh installs it)`);

/** Whatever registers cleanup: a test context (`t`), `{ after }` from node:test, or the bench's onCleanup. */
export interface CleanupOwner {
  after(fn: () => Promise<void>): void;
}

export interface NatsNode {
  index: number;
  name: string;
  clientPort: number;
  routePort: number;
  monitorPort: number;
  url: string;
  storeDir: string;
  configFile: string;
  logFile: string;
  process: ChildProcess | null;
}

export interface NatsCluster {
  readonly nodes: readonly NatsNode[];
  /** nats://<clientHost>:port of every node, for `--cluster`. */
  readonly urls: string[];
  readonly clusterName: string;
  /** Sends `signal` to node i and waits until it has exited. */
  kill(index: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts node i again (same ports, same store dir) and waits until its JetStream is current. */
  restart(index: number): Promise<void>;
  /** The index of the node that leads `stream` now (polls until a leader is known). */
  streamLeader(stream: string, timeoutMs?: number): Promise<number>;
  /** Waits until every running node's /healthz is ok (JetStream current, meta leader known). */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** Stops every node (SIGTERM, then SIGKILL) and removes the dirs. Idempotent. */
  stop(): Promise<void>;
}

export interface NatsClusterOptions {
  /** Nodes in the cluster; 1 makes a single server without routes. Default 3. */
  nodes?: number;
  /** Time allowed for the cluster to become healthy. Default 60 s (elections on a loaded 2-core machine are slow). */
  startTimeoutMs?: number;
  /** Lines added to each node's configuration (TLS, authorization). */
  extraConfig?: string;
  /**
   * The address clients connect to (default 127.0.0.1): one of this machine's own addresses, e.g. the host side of a
   * test namespace's veth, so a process in that namespace can reach the cluster.
   */
  clientHost?: string;
}

/**
 * An owner whose hooks run last-registered first, in one hook of `t`: node:test runs a test's own after hooks in the
 * order they were registered, which would stop the servers before the connections made to them are closed.
 */
export function lifo(t: CleanupOwner): CleanupOwner {
  const hooks: Array<() => Promise<void>> = [];
  t.after(async () => {
    // Every hook runs even when one throws (a namespace must go even if a server's stop failed); the first error is
    // rethrown at the end.
    let failure: unknown = null;
    for (const hook of hooks.reverse()) {
      try {
        await hook();
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure !== null) throw failure;
  });
  return { after: (fn) => void hooks.push(fn) };
}

const alive = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
});

/** A port the kernel says is free now (bound then released; the tiny race is acceptable on loopback in tests). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  server.close();
  await once(server, 'close');
  return port;
}

function configOf(node: NatsNode, all: NatsNode[], clusterName: string, extraConfig = '', clientHost = '127.0.0.1'): string {
  const lines = [
    `server_name: "${node.name}"`,
    `listen: "${clientHost}:${node.clientPort}"`,
    `http: "127.0.0.1:${node.monitorPort}"`,
    'jetstream {',
    `  store_dir: "${node.storeDir}"`,
    '  max_memory_store: 268435456',
    // Room for what the buckets of a gateway reserve (their max_bytes: some 7 GiB), not disk used.
    '  max_file_store: 12884901888',
    '}',
  ];
  if (all.length > 1) {
    const routes = all.filter((other) => other !== node).map((other) => `"nats-route://127.0.0.1:${other.routePort}"`);
    lines.push('cluster {', `  name: "${clusterName}"`, `  listen: "127.0.0.1:${node.routePort}"`, `  routes: [${routes.join(', ')}]`, '}');
  }
  return `${lines.join('\n')}\n${extraConfig}`;
}

async function healthy(node: NatsNode): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${node.monitorPort}/healthz`, { signal: AbortSignal.timeout(2_000) });
    return response.ok && ((await response.json()) as { status?: string }).status === 'ok';
  } catch {
    return false;
  }
}

async function waitUntil(condition: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Starts the cluster; on any failure whatever was started is stopped before the error is rethrown, with the end of
 * each node's log in the message. A start that failed is tried once more on fresh ports: a port found free can be
 * taken by another test before nats-server binds it (the node then exits at once, and the cluster never forms).
 */
export async function startNatsCluster(owner: CleanupOwner, options: NatsClusterOptions = {}): Promise<NatsCluster> {
  try {
    return await startOnce(owner, options);
  } catch (error) {
    process.stderr.write(`# the NATS cluster did not start; trying once more on fresh ports: ${error instanceof Error ? error.message : String(error)}\n`);
    return startOnce(owner, options);
  }
}

async function startOnce(owner: CleanupOwner, options: NatsClusterOptions): Promise<NatsCluster> {
  const count = options.nodes ?? 3;
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const dir = await mkdtemp(join(tmpdir(), 'kindling-nats-'));
  const clusterName = `kc-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const nodes: NatsNode[] = [];
  for (let index = 0; index < count; index++) {
    const nodeDir = join(dir, `n${index}`);
    await mkdir(nodeDir);
    const clientPort = await freePort();
    nodes.push({
      index,
      name: `n${index}`,
      clientPort,
      routePort: await freePort(),
      monitorPort: await freePort(),
      url: `nats://${options.clientHost ?? '127.0.0.1'}:${clientPort}`,
      storeDir: join(nodeDir, 'store'),
      configFile: join(nodeDir, 'nats.conf'),
      logFile: join(nodeDir, 'nats.log'),
      process: null,
    });
  }
  for (const node of nodes) await writeFile(node.configFile, configOf(node, nodes, clusterName, options.extraConfig, options.clientHost));

  const launch = (node: NatsNode): void => {
    const log = createWriteStream(node.logFile, { flags: 'a' });
    const child = spawn(NATS_SERVER, ['-c', node.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    alive.add(child);
    child.once('exit', () => alive.delete(child));
    node.process = child;
  };

  const kill = async (index: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const node = nodes[index];
    if (!node) throw new Error(`no node ${index} in a cluster of ${nodes.length}`);
    const child = node.process;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
    node.process = null;
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(
      nodes.map(async (node) => {
        const child = node.process;
        if (child === null || child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
        node.process = null;
      }),
    );
    await rm(dir, { recursive: true, force: true });
  };
  owner.after(stop);

  const waitHealthy = async (timeoutMs = startTimeoutMs): Promise<void> => {
    await waitUntil(async () => (await Promise.all(nodes.filter((node) => node.process !== null).map(healthy))).every(Boolean), timeoutMs, `JetStream on ${clusterName} to be healthy`);
  };

  const streamLeader = async (stream: string, timeoutMs = 30_000): Promise<number> => {
    const running = nodes.filter((node) => node.process !== null).map((node) => node.url);
    const nc = await connect({ servers: running, reconnect: false });
    try {
      // No API check: it is one request that times out while the cluster elects a leader; the wait below retries.
      const jsm = await jetstreamManager(nc, { checkAPI: false });
      let leader = -1;
      await waitUntil(
        async () => {
          const info = await jsm.streams.info(stream).catch(() => null);
          const name = info?.cluster?.leader;
          leader = nodes.findIndex((node) => node.name === name);
          return leader >= 0;
        },
        timeoutMs,
        `a leader of stream ${stream}`,
      );
      return leader;
    } finally {
      await nc.close();
    }
  };

  const restart = async (index: number): Promise<void> => {
    const node = nodes[index];
    if (!node) throw new Error(`no node ${index} in a cluster of ${nodes.length}`);
    if (node.process !== null) await kill(index, 'SIGTERM');
    launch(node);
    await waitUntil(() => healthy(node), startTimeoutMs, `node ${node.name} to be healthy after its restart`);
  };

  try {
    for (const node of nodes) launch(node);
    await waitUntil(
      async () => {
        const dead = nodes.find((node) => node.process !== null && (node.process.exitCode !== null || node.process.signalCode !== null));
        if (dead !== undefined) throw new Error(`node ${dead.name} exited during start-up`);
        return (await Promise.all(nodes.map(healthy))).every(Boolean);
      },
      startTimeoutMs,
      `JetStream on ${clusterName} to be healthy`,
    );
  } catch (error) {
    const tails = await Promise.all(nodes.map(async (node) => `${node.name}: ${(await readFile(node.logFile, 'utf8').catch(() => '')).trimEnd().split('\n').slice(-5).join(' | ')}`));
    await stop();
    throw new Error(`the NATS cluster did not start: ${error instanceof Error ? error.message : String(error)}; the ends of the logs: ${tails.join(' ;; ')}`, { cause: error });
  }
  return { nodes, urls: nodes.map((node) => node.url), clusterName, kill, restart, streamLeader, waitHealthy, stop };
}
