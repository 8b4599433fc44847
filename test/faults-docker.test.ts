/**
 * Fault: the Docker engine dies and comes back while Kindling runs. The shared engine is never touched: the test
 * starts its own dockerd (own socket, data root, exec root, pid file, a bridge of its own, no iptables), loads kindling/base
 * into it from the shared engine, and points a server at it. Killing that engine mid-run: executions in flight fail
 * with a clear retryable error (503), not a hang or a 500; /readyz reports docker down; new executions get 503 at
 * once; prewarmed containers that died are dropped. Once the engine is back, executions succeed without restarting
 * Kindling, and the containers the old engine left are removed.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, readFileSync, readdirSync, rmdirSync, closeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import Docker from 'dockerode';
import { ERROR_CODES, type ErrorCode } from '../src/core/errors.js';
import { LABEL_OWNER } from '../src/executors/executor.js';
import { skipOrFail } from '../src/executors/test-support.js';
import { processes } from './helpers/faults.js';
import { dockerUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const run = promisify(execFile);
const DOCKERD = '/usr/sbin/dockerd';
// Per process: two runs of this test on one machine must not share an engine.
const SOCKET = `/run/kindling-faults-docker-${process.pid}.sock`;
/**
 * The test engine's containers get their own cgroup parent: a SIGKILLed engine (and its containerd) leaves the
 * containers' processes running with no shim, and only their cgroups still name them. `destroy()` kills what is in
 * them; the leftover check of scripts/test.sh (cgroups below a kindling dir) sees anything missed.
 */
const CGROUP_PARENT = `kindling-faults-docker-${process.pid}`;
/**
 * The test engine's own bridge. Not `--bridge=none`: with it dockerd deletes any `docker0` link at start, which is the
 * shared engine's bridge (every `docker run` on the machine then fails). A bridge of its own, with an address from
 * TEST-NET-1 (192.0.2.0/24, reserved for documentation: never routed), keeps the engines apart. Kindling's containers
 * use network none; the bridge only has to exist.
 */
const BRIDGE = `kfd${process.pid % 1_000_000}`;
const BRIDGE_CIDR = '192.0.2.1/24';

/** Kills every process in the cgroups below `parent` (each v1 controller and the unified root) and removes them. */
function destroyCgroupTree(parent: string): void {
  const roots = existsSync('/sys/fs/cgroup/cgroup.controllers')
    ? ['/sys/fs/cgroup']
    : readdirSync('/sys/fs/cgroup').map((name) => join('/sys/fs/cgroup', name));
  for (const root of roots) {
    const top = join(root, parent);
    if (!existsSync(top)) continue;
    const dirs = [top, ...readdirSync(top, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(top, e.name))];
    for (const dir of dirs) {
      for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    // A killed process leaves its cgroup a moment later: retry the removal briefly.
    for (const dir of dirs.reverse()) {
      for (let attempt = 0; attempt < 50; attempt++) {
        try {
          rmdirSync(dir);
          break;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') break;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
        }
      }
    }
  }
}

const unavailable =
  (await dockerUnavailableReason()) ??
  (!existsSync(DOCKERD) ? skipOrFail('docker', `${DOCKERD} is missing (scripts/setup.sh installs docker.io)`) : null) ??
  (process.getuid?.() !== 0 ? skipOrFail('docker', 'a test-owned dockerd needs root') : null);

/** A dockerd owned by this test: started, killed and restarted by PID, its dirs removed at the end. */
class TestEngine {
  readonly docker = new Docker({ socketPath: SOCKET });
  private child: ChildProcess | null = null;
  private constructor(
    readonly dir: string,
    readonly execRoot: string,
  ) {}

  static async create(): Promise<TestEngine> {
    await run('ip', ['link', 'add', 'name', BRIDGE, 'type', 'bridge']);
    await run('ip', ['addr', 'add', BRIDGE_CIDR, 'dev', BRIDGE]);
    await run('ip', ['link', 'set', BRIDGE, 'up']);
    const dir = await mkdtemp(join(tmpdir(), 'kindling-faults-docker-'));
    // containerd's socket lives under the exec root: a unix socket path must stay short.
    return new TestEngine(dir, `/run/kindling-faults-exec-${process.pid}`);
  }

  /**
   * Starts dockerd. A restart has to reconnect to the shims of the containers that outlived the killed engine; on a
   * loaded machine its containerd may miss dockerd's own start-up deadline and dockerd exits: tried up to 3 times.
   */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.startOnce();
        return;
      } catch (error) {
        if (attempt >= 3 || this.child?.exitCode === null) throw error;
      }
    }
  }

  private async startOnce(): Promise<void> {
    const log = openSync(join(this.dir, 'dockerd.log'), 'a');
    this.child = spawn(
      DOCKERD,
      [`--host=unix://${SOCKET}`, `--data-root=${join(this.dir, 'data')}`, `--exec-root=${this.execRoot}`, `--pidfile=${join(this.dir, 'dockerd.pid')}`, `--bridge=${BRIDGE}`, '--iptables=false', '--ip-masq=false', `--cgroup-parent=/${CGROUP_PARENT}`],
      { stdio: ['ignore', log, log] },
    );
    closeSync(log);
    const child = this.child;
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`the test dockerd exited: ${readFileSync(join(this.dir, 'dockerd.log'), 'utf8').slice(-2000)}`);
        return this.docker.ping().then(
          () => true,
          () => false,
        );
      },
      60_000,
      'the test dockerd to answer',
    );
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
  }

  /** Sends a signal without waiting for an exit (SIGSTOP / SIGCONT: a frozen engine). */
  signal(signal: NodeJS.Signals): void {
    this.child?.kill(signal);
  }

  /** Stops the engine (SIGTERM, then SIGKILL), kills what it left (containerd, shims), unmounts and removes its dirs. */
  async destroy(): Promise<void> {
    const child = this.child;
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }
    for (const p of processes()) if (p.cmdline.includes(this.execRoot) || p.cmdline.includes(this.dir)) process.kill(p.pid, 'SIGKILL');
    destroyCgroupTree(CGROUP_PARENT);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((line) => line.split(' ')[4] ?? '')
      .filter((point) => point.startsWith(this.dir) || point.startsWith(this.execRoot))
      .sort((a, b) => b.length - a.length);
    for (const point of mounts) await run('umount', ['-l', point]).catch(() => undefined);
    await rm(this.execRoot, { recursive: true, force: true });
    await rm(this.dir, { recursive: true, force: true });
    await rm(SOCKET, { force: true });
    await run('ip', ['link', 'del', BRIDGE]).catch(() => undefined);
  }
}

interface Answer {
  status: number;
  code?: string;
  retryAfter: string | null;
  ms: number;
}

async function execute(url: string, command: string[]): Promise<Answer & { stdout?: string }> {
  const started = Date.now();
  const response = await fetch(`${url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command }) });
  const body = (await response.json()) as { stdout?: string; error?: { code: string } };
  return { status: response.status, ...(body.error ? { code: body.error.code } : { stdout: body.stdout ?? '' }), retryAfter: response.headers.get('retry-after'), ms: Date.now() - started };
}

function assertRetryable503(answer: Answer, what: string): void {
  assert.equal(answer.status, 503, `${what}: ${JSON.stringify(answer)}`);
  assert.ok(answer.code !== undefined && ERROR_CODES[answer.code as ErrorCode]?.retryable === true, `${what}: a retryable code, got ${answer.code}`);
  assert.ok(answer.retryAfter !== null, `${what}: Retry-After`);
}

describe('Docker engine restart mid-run', { skip: unavailable ?? false }, () => {
  let engine: TestEngine;
  let server: TestServer | null = null;
  const ownerContainers = async (): Promise<Docker.ContainerInfo[]> =>
    engine.docker.listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_OWNER}=${server!.ownerId}`] }) });

  // The shared engine's bridge must survive the test engine (see BRIDGE): checked while the test engine runs.
  const sharedBridge = '/sys/class/net/docker0';
  const sharedBridgeBefore = existsSync(sharedBridge);

  before(async () => {
    engine = await TestEngine.create();
    await engine.start();
    await run('sh', ['-c', `/usr/bin/docker save kindling/base:latest | /usr/bin/docker -H unix://${SOCKET} load`]);
  });
  after(async () => {
    // Bounded: a regression that hangs executions must fail this file, not hang it; the engine goes either way.
    const stopped = server?.stop().catch(() => undefined);
    await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, 30_000).unref())]);
    await engine?.destroy();
  });

  it('in-flight executions fail with a retryable 503, /readyz says docker is down, and it recovers without a restart', { timeout: 180_000 }, async () => {
    server = await startTestServer({ executor: 'docker', dockerSocketPath: SOCKET, prewarmPerShape: 2 });
    const url = server.url;
    const first = await execute(url, ['echo', 'before']);
    assert.equal(first.stdout, 'before\n');
    // The shape is prewarmed now: two idle containers wait for the next executions.
    await waitFor(async () => (await ownerContainers()).length >= 2, 30_000, 'prewarmed containers');

    const inFlight = [execute(url, ['sleep', '60']), execute(url, ['sleep', '61'])];
    await waitFor(
      async () => {
        const infos = await Promise.all((await ownerContainers()).map((info) => engine.docker.getContainer(info.Id).top().catch(() => ({ Processes: [] as string[][] }))));
        return infos.filter((top) => (top.Processes ?? []).some((row: string[]) => row.join(' ').includes('sleep 6'))).length === 2;
      },
      30_000,
      'both executions to run',
    );
    const killedAt = Date.now();
    await engine.kill('SIGKILL');

    const answers = await Promise.all(inFlight);
    const failedAfterMs = Date.now() - killedAt;
    for (const answer of answers) assertRetryable503(answer, 'an execution in flight when the engine died');
    assert.ok(failedAfterMs < 20_000, `the failure came quickly, not after the sleep (${failedAfterMs} ms)`);
    process.stdout.write(`# docker engine SIGKILL: in-flight executions answered 503 ${failedAfterMs} ms after the kill\n`);
    // While it is down: /readyz says so, and new executions fail fast with the same clear error.
    await waitFor(async () => (await fetch(`${url}/readyz`)).status === 503, 10_000, '/readyz to report docker down');
    const ready = (await (await fetch(`${url}/readyz`)).json()) as { executors: { name: string; ready: boolean; reason: string }[] };
    const dockerStatus = ready.executors.find((status) => status.name === 'docker');
    assert.equal(dockerStatus?.ready, false);
    assert.match(dockerStatus!.reason, /not reachable/);
    for (let i = 0; i < 3; i++) {
      const answer = await execute(url, ['echo', 'down']);
      assertRetryable503(answer, 'an execution while the engine is down');
      assert.ok(answer.ms < 10_000, `answered in ${answer.ms} ms`);
    }

    await engine.start();
    // No restart of Kindling: the next executions succeed (the dead prewarmed containers are dropped, not used).
    for (let i = 0; i < 4; i++) {
      const answer = await execute(url, ['echo', `after ${i}`]);
      assert.equal(answer.status, 200, JSON.stringify(answer));
      assert.equal(answer.stdout, `after ${i}\n`);
    }
    await waitFor(async () => (await fetch(`${url}/readyz`)).status === 200, 10_000, '/readyz to report ready again');
    // What the old engine's life left (stopped containers of the killed executions and the old prewarmed ones) goes;
    // only the fresh prewarmed containers remain.
    await waitFor(async () => (await ownerContainers()).every((info) => info.State === 'running') && (await ownerContainers()).length <= 2, 30_000, 'the dead containers to be removed');
  });

  it('a graceful engine restart (SIGTERM, as systemctl restart does) fails in-flight executions the same way', { timeout: 180_000 }, async () => {
    const url = server!.url;
    const inFlight = execute(url, ['sleep', '62']);
    await waitFor(
      async () => {
        const infos = await Promise.all((await ownerContainers()).map((info) => engine.docker.getContainer(info.Id).top().catch(() => ({ Processes: [] as string[][] }))));
        return infos.some((top) => (top.Processes ?? []).some((row: string[]) => row.join(' ').includes('sleep 62')));
      },
      30_000,
      'the execution to run',
    );
    await engine.kill('SIGTERM');
    assertRetryable503(await inFlight, 'an execution in flight when the engine stopped');
    await engine.start();
    const answer = await execute(url, ['echo', 'after']);
    assert.equal(answer.status, 200, JSON.stringify(answer));
    assert.equal(answer.stdout, 'after\n');
    const stopping = server!;
    server = null;
    const ownerId = stopping.ownerId;
    await stopping.stop();
    const left = await engine.docker.listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_OWNER}=${ownerId}`] }) });
    assert.deepEqual(left.map((info) => info.Id), [], 'no container of the server is left in the engine');
  });

  it('a frozen engine (SIGSTOP): a cold start gives up at the create deadline with a retryable 503; after SIGCONT it works and nothing is left', { timeout: 120_000 }, async () => {
    const frozen = await startTestServer({ executor: 'docker', dockerSocketPath: SOCKET, prewarmPerShape: 0, dockerCreateTimeoutMs: 3000 });
    try {
      assert.equal((await execute(frozen.url, ['echo', 'before'])).status, 200);
      engine.signal('SIGSTOP');
      let answer: Answer;
      try {
        answer = await execute(frozen.url, ['echo', 'frozen']);
      } finally {
        engine.signal('SIGCONT');
      }
      assertRetryable503(answer, 'a cold start against a frozen engine');
      assert.ok(answer.ms < 15_000, `answered after ${answer.ms} ms; the deadline is 3 s`);
      const after = await execute(frozen.url, ['echo', 'thawed']);
      assert.equal(after.status, 200, JSON.stringify(after));
      assert.equal(after.stdout, 'thawed\n');
      // The container the engine made after it woke up is removed, not left created or running.
      await waitFor(
        async () => (await engine.docker.listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_OWNER}=${frozen.ownerId}`] }) })).length === 0,
        30_000,
        'the late container to be removed',
      );
    } finally {
      engine.signal('SIGCONT');
      await frozen.stop();
    }
  });

  it('leaves the shared engine alone: its docker0 bridge is still there', () => {
    if (!sharedBridgeBefore) return; // the shared engine has no default bridge here: nothing to protect
    assert.ok(existsSync(sharedBridge), 'docker0 was deleted: the shared engine cannot start containers with a network any more');
  });
});
