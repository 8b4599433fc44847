/**
 * Persistent sandboxes on the sandbox executor (real bubblewrap), end to end through the TypeScript SDK against a
 * started server: processes and files persist between commands, pause stops CPU, resume continues, a timeout kills
 * the command only, paths never leave the sandbox, tenants are isolated, delete and restart leave nothing behind.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { ConflictError, Kindling, NotFoundError, RateLimitError, ValidationError, type Sandbox } from '@kindling/sdk';
import { leftovers, nothingLeft, startServerProcess, stopProcess, type ServerProcess } from './helpers/faults.js';
import { docker, dockerUnavailableReason, newDataDir, ownerIdOf, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const dockerMissing = await dockerUnavailableReason();
const ADMIN = 'admin-key-for-sandboxes-test-0123456789';

/** Cgroup dirs of this data dir's owner (v1: one per controller; v2: one). */
function cgroupsOf(ownerId: string): string[] {
  const found: string[] = [];
  for (const base of ['/sys/fs/cgroup/freezer/kindling', '/sys/fs/cgroup/memory/kindling', '/sys/fs/cgroup/pids/kindling', '/sys/fs/cgroup/kindling']) {
    const dir = join(base, ownerId);
    if (!existsSync(dir)) continue;
    // Not `.freeze-pin`: the driver's always-empty frozen cgroup, no sandbox's.
    for (const entry of readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory() && !entry.name.startsWith('.')) found.push(join(dir, entry.name));
  }
  return found;
}

/** Host pids whose command line names `marker` (processes started in sandboxes by these tests). */
function processesWith(marker: string): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((line) => line.includes(marker) && !line.includes('ps -eo'))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

const execFileAsync = promisify(execFile);
const CLI = new URL('../src/main.js', import.meta.url).pathname;

/** Runs the CLI with a clean environment; resolves with stdout/stderr/exit code. */
async function cli(args: string[], env: Record<string, string>): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync('node', [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const failed = error as { stdout: string; stderr: string; code: number };
    return { stdout: failed.stdout, stderr: failed.stderr, code: failed.code };
  }
}

/**
 * Whether the sandbox's processes are used up in the pids controller's cgroup `dir`: its pids.max holds the sandbox's
 * `pids` plus one for bwrap's monitor (src/executors/sandbox/index.ts, PIDS_OVERHEAD), and the user's processes stop
 * at their share (pids.current one short of pids.max as often as at it).
 */
function pidsUsedUp(dir: string): boolean {
  try {
    const max = Number(readFileSync(join(dir, 'pids.max'), 'utf8'));
    return Number.isFinite(max) && Number(readFileSync(join(dir, 'pids.current'), 'utf8')) >= max - 1;
  } catch {
    return false;
  }
}

const mountsUnder = (dir: string): string[] => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((line) => line.includes(dir));

describe('persistent sandboxes (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let a: Kindling;
  let b: Kindling;

  before(async () => {
    // Docker too (when the engine is there): sandboxes of both executors live side by side.
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN, maxSandboxesPerTenant: 3, ...(dockerMissing === null ? { enableExecutors: ['docker'] } : {}) });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    a = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('sbx-a')).apiKey });
    b = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('sbx-b')).apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  test('a background process and files persist between commands; a timeout kills the command only', async () => {
    const sb = await a.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 128, diskMb: 16 }, metadata: { purpose: 'test' } });
    try {
      assert.equal(sb.state, 'running');
      assert.equal(sb.info.executor, 'sandbox');
      assert.deepEqual(sb.info.metadata, { purpose: 'test' });
      const started = await sb.commands.run(['sh', '-c', 'sleep 600 >/dev/null 2>&1 & echo $!']);
      assert.equal(started.exitCode, 0, started.stderr);
      const pid = started.stdout.trim();
      assert.match(pid, /^\d+$/);
      const seen = await sb.commands.run(['sh', '-c', `cat /proc/${pid}/cmdline | tr '\\0' ' '`]);
      assert.equal(seen.stdout.trim(), 'sleep 600', 'the background process of the first command is alive in the second');

      const wrote = await sb.commands.run(['sh', '-c', 'echo "$GREETING" > note.txt'], { env: { GREETING: 'hello there' } });
      assert.equal(wrote.exitCode, 0, wrote.stderr);
      assert.equal((await sb.commands.run(['cat', 'note.txt'])).stdout, 'hello there\n');
      const piped = await sb.commands.run(['sh', '-c', 'cat > /tmp/in.txt; wc -c < /tmp/in.txt'], { stdin: 'abc' });
      assert.equal(piped.stdout.trim(), '3');
      const failed = await sb.commands.run(['sh', '-c', 'echo oops >&2; exit 7'], { workdir: '/tmp' });
      assert.deepEqual([failed.exitCode, failed.stderr, failed.timedOut], [7, 'oops\n', false]);
      const missing = await sb.commands.run(['no-such-command']);
      assert.equal(missing.exitCode, 127);
      const capped = await sb.commands.run(['sh', '-c', 'head -c 5000 /dev/zero | tr "\\0" x'], { outputBytes: 100 });
      assert.deepEqual([capped.stdout.length, capped.truncated, capped.stdoutTruncated], [100, true, true]);

      // A command that outlives its timeout is killed with its children; the sandbox and the earlier sleep live on.
      const slow = await sb.commands.run(['sh', '-c', 'sleep 300 & sleep 301; echo never'], { timeoutMs: 500 });
      assert.equal(slow.timedOut, true);
      assert.equal(slow.exitCode, 137);
      assert.equal(slow.stdout, '');
      const after = await sb.commands.run(['sh', '-c', `ls /proc | grep -E '^[0-9]+$' | while read p; do cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done`]);
      assert.match(after.stdout, /sleep 600/);
      assert.doesNotMatch(after.stdout, /sleep 30[01]/, 'the timed-out command and its child were killed');
    } finally {
      await sb.kill();
    }
  });

  test('files: write, read, list with sizes and modes, remove; paths never leave the sandbox', async () => {
    const sb = await a.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 4 } });
    const hostDir = await mkdtemp(join(tmpdir(), 'kindling-host-secret-'));
    try {
      await writeFile(join(hostDir, 'secret.txt'), 'host secret');
      const written = await sb.files.write('dir/sub/hello.txt', 'hi from the API');
      assert.deepEqual(written, { path: '/work/dir/sub/hello.txt', size: 15 });
      assert.equal(await sb.files.read('/work/dir/sub/hello.txt'), 'hi from the API');
      assert.equal((await sb.commands.run(['cat', 'dir/sub/hello.txt'])).stdout, 'hi from the API', 'the API and commands see the same files');
      const bytes = new Uint8Array(256).map((_, i) => i);
      await sb.files.write('/tmp/bin.dat', bytes);
      assert.deepEqual(await sb.files.readBytes('/tmp/bin.dat'), bytes);
      await sb.files.write('/work/empty', '');
      assert.equal(await sb.files.read('/work/empty'), '');
      await sb.commands.run(['sh', '-c', 'chmod 600 dir/sub/hello.txt && mkdir -p dir/d2 && touch "dir/odd name"']);
      const listing = await sb.files.list('/work/dir/sub');
      assert.deepEqual(listing.map((e) => [e.name, e.type, e.size, e.mode]), [['hello.txt', 'file', 15, '600']]);
      const dir = await sb.files.list('dir');
      assert.deepEqual(dir.map((e) => `${e.type}:${e.name}`).sort(), ['dir:d2', 'dir:sub', 'file:odd name']);

      await assert.rejects(sb.files.read('/work/nope'), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_FILE_NOT_FOUND');
      await assert.rejects(sb.files.read('/work/dir'), (error: unknown) => error instanceof ValidationError && error.code === 'SANDBOX_PATH_INVALID');
      await assert.rejects(sb.files.read('../../etc/passwd'), (error: unknown) => error instanceof ValidationError && error.code === 'SANDBOX_PATH_INVALID');
      await assert.rejects(sb.files.write('/work/../etc/x', 'x'), (error: unknown) => error instanceof ValidationError && error.code === 'SANDBOX_PATH_INVALID');
      await assert.rejects(sb.files.write('/usr/bin/evil', 'x'), (error: unknown) => error instanceof ValidationError && /read-only/.test(error.message));

      // Symlinks planted by the user are followed inside the sandbox: to its own pid 1's root, never the host's.
      const planted = await sb.commands.run([
        'sh',
        '-c',
        `ln -s /proc/1/root/etc/hostname host-link && ln -s ${hostDir}/secret.txt abs-link && ln -s /proc/1/root${hostDir} dir-link && ln -s / root-link`,
      ]);
      assert.equal(planted.exitCode, 0, planted.stderr);
      const ownHostname = (await sb.commands.run(['cat', '/etc/hostname'])).stdout;
      assert.equal(await sb.files.read('host-link'), ownHostname, "/proc/1/root is the sandbox's own root: its image's /etc/hostname");
      await assert.rejects(sb.files.read('abs-link'), NotFoundError, 'an absolute link to a host path finds nothing: the host is not there');
      await assert.rejects(sb.files.read('dir-link/secret.txt'), NotFoundError);
      await assert.rejects(sb.files.write('abs-link', 'overwrite'), ValidationError, "writing through a link to a host path fails inside the sandbox (its root is read-only)");
      assert.equal(readFileSync(join(hostDir, 'secret.txt'), 'utf8'), 'host secret', 'the host file is untouched');
      await assert.rejects(sb.files.read('root-link/proc/1/root/../../../etc/shadow'), ValidationError);

      // diskMb bounds uploads: 413, and no partial file is left.
      await assert.rejects(sb.files.write('/work/big', new Uint8Array(6 * 1024 * 1024)), (error: unknown) => error instanceof ValidationError && (error.code === 'SANDBOX_DISK_FULL' || error.code === 'PAYLOAD_TOO_LARGE'));
      await assert.rejects(sb.files.read('/work/big'), NotFoundError);

      await sb.files.remove('dir');
      await assert.rejects(sb.files.list('dir'), NotFoundError);
      await assert.rejects(sb.files.remove('dir'), NotFoundError);
    } finally {
      await sb.kill();
      await rm(hostDir, { recursive: true, force: true });
    }
  });

  test('pause freezes every process (no CPU), resume continues them; commands auto-resume unless told not to', async () => {
    const sb = await a.sandboxes.create({ runtime: 'bash' });
    try {
      // The counter file is replaced whole (rename), so a reader never sees it half-written.
      await sb.commands.run(['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.tmp; mv /tmp/c.tmp /tmp/count; done >/dev/null 2>&1 &']);
      await waitFor(async () => (await sb.refresh()).usage!.cpuMs! > 100, 10_000, 'the busy loop uses CPU');
      const counted = async (): Promise<number> => {
        const read = await sb.commands.run(['cat', '/tmp/count'], { autoResume: false });
        assert.equal(read.exitCode, 0, read.stderr);
        return Number(read.stdout);
      };
      await waitFor(async () => (await sb.commands.run(['test', '-f', '/tmp/count'])).exitCode === 0, 10_000, 'the loop wrote its counter');
      const before = await counted();
      await sb.pause();
      assert.equal(sb.state, 'paused');
      const cpu1 = (await sb.refresh()).usage!.cpuMs!;
      // Paused: a second of wall time passes (observed through the server's own clock), and the CPU counter does not move.
      const start = Date.now();
      await waitFor(async () => Date.now() - start > 1000, 5000, 'a second passes');
      const cpu2 = (await sb.refresh()).usage!.cpuMs!;
      assert.ok(cpu2 - cpu1 < 5, `a paused sandbox used ${cpu2 - cpu1} ms of CPU`);
      assert.equal(sb.state, 'paused');
      await assert.rejects(sb.commands.run(['true'], { autoResume: false }), (error: unknown) => error instanceof ConflictError && error.code === 'SANDBOX_PAUSED');
      assert.equal((await a.sandboxes.list({ state: 'paused' })).map((s) => s.id).includes(sb.id), true);

      await sb.resume();
      assert.equal(sb.state, 'running');
      const after = await counted();
      assert.ok(after > before, 'the loop went on after resume');
      await waitFor(async () => (await counted()) > after, 10_000, 'the loop goes on');

      // A command on a paused sandbox resumes it.
      await sb.pause();
      const run = await sb.commands.run(['echo', 'auto']);
      assert.equal(run.stdout, 'auto\n');
      assert.equal((await sb.refresh()).state, 'running');
    } finally {
      await sb.kill();
    }
  });

  test('idle timeout pauses; max lifetime stops the processes and keeps the files', async () => {
    const idle = await a.sandboxes.create({ runtime: 'bash', idleTimeoutMs: 1000 });
    const short = await a.sandboxes.create({ runtime: 'bash', maxLifetimeMs: 1500 });
    try {
      await waitFor(async () => (await idle.refresh()).state === 'paused', 10_000, 'the idle sandbox is paused');
      assert.equal((await idle.commands.run(['echo', 'back'])).stdout, 'back\n');
      await waitFor(async () => (await short.refresh()).state === 'stopped', 10_000, 'the short-lived sandbox stopped');
      assert.match(short.info.stopReason ?? '', /maxLifetimeMs/);
      assert.equal(short.info.usage, null);
      // Its files were kept: the next command starts it again on them, with a new lifetime.
      assert.equal((await short.commands.run(['echo', 'again'])).stdout, 'again\n');
      assert.equal((await short.refresh()).state, 'running');
    } finally {
      await idle.kill();
      await short.kill();
    }
  });

  test("tenants: another tenant's sandbox is a 404; the per-tenant cap answers 429; unsupported executors say so", async () => {
    const sb = await a.sandboxes.create({ runtime: 'bash' });
    try {
      await assert.rejects(b.sandboxes.get(sb.id), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
      await assert.rejects(b.sandboxes.run(sb.id, ['true']), NotFoundError);
      await assert.rejects(b.sandboxes.readFile(sb.id, '/etc/hostname'), NotFoundError);
      await assert.rejects(b.sandboxes.delete(sb.id), NotFoundError);
      await assert.rejects(b.sandboxes.pause(sb.id), NotFoundError);
      assert.deepEqual(await b.sandboxes.list(), []);
      assert.equal((await a.sandboxes.list()).some((s) => s.id === sb.id), true);
      await assert.rejects(a.sandboxes.get('sb_nope'), NotFoundError);

      const more = [await a.sandboxes.create({ runtime: 'bash' }), await a.sandboxes.create({ runtime: 'bash' })];
      await assert.rejects(a.sandboxes.create({ runtime: 'bash' }), (error: unknown) => error instanceof RateLimitError && error.code === 'TENANT_SANDBOX_LIMIT');
      const other = await b.sandboxes.create({ runtime: 'bash' });
      await other.kill();
      for (const extra of more) await extra.kill();
      if (dockerMissing !== null) {
        await assert.rejects(a.sandboxes.create({ runtime: 'bash', executor: 'docker' }), (error: unknown) => error instanceof ValidationError && error.code === 'UNKNOWN_EXECUTOR');
      }
      await assert.rejects(a.sandboxes.create({ runtime: 'bash', executor: 'microvm' }), ValidationError);
      await assert.rejects(a.sandboxes.create({ runtime: 'cobol' }), ValidationError);
      await assert.rejects(a.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 1 } }), ValidationError);
    } finally {
      await sb.kill();
    }
  });

  test('the CLI: kindling sandbox create, exec, cp, files, pause, resume, list, rm', async () => {
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    const env = { KINDLING_URL: server.url, KINDLING_API_KEY: (await admin.tenants.create('sbx-cli')).apiKey };
    const created = await cli(['sandbox', 'create', '--runtime', 'bash', '-m', 'via=cli'], env);
    assert.equal(created.code, 0, created.stderr);
    const id = created.stdout.trim();
    assert.match(id, /^sb_/);
    const ran = await cli(['sandbox', 'exec', id, '--', 'sh', '-c', 'echo out; echo err >&2; exit 3'], env);
    assert.deepEqual([ran.code, ran.stdout, ran.stderr], [3, 'out\n', 'err\n']);
    const dir = await mkdtemp(join(tmpdir(), 'kindling-cli-cp-'));
    try {
      await writeFile(join(dir, 'up.txt'), 'uploaded by cp');
      const up = await cli(['sandbox', 'cp', join(dir, 'up.txt'), `${id}:/work/up.txt`], env);
      assert.equal(up.code, 0, up.stderr);
      const down = await cli(['sandbox', 'cp', `${id}:/work/up.txt`, join(dir, 'down.txt')], env);
      assert.equal(down.code, 0, down.stderr);
      assert.equal(readFileSync(join(dir, 'down.txt'), 'utf8'), 'uploaded by cp');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    assert.match((await cli(['sandbox', 'files', id], env)).stdout, /file\s+14 .* up\.txt/);
    assert.equal((await cli(['sandbox', 'pause', id], env)).stdout, `${id} paused\n`);
    const refused = await cli(['sandbox', 'exec', '--no-auto-resume', id, '--', 'true'], env);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /SANDBOX_PAUSED/);
    assert.match((await cli(['sandbox', 'list', '--state', 'paused'], env)).stdout, new RegExp(`${id}\\s+paused`));
    assert.equal((await cli(['sandbox', 'resume', id], env)).stdout, `${id} running\n`);
    assert.equal((await cli(['sandbox', 'rm', id], env)).stdout, `deleted ${id}\n`);
    const gone = await cli(['sandbox', 'get', id], env);
    assert.equal(gone.code, 2);
    assert.match(gone.stderr, /SANDBOX_NOT_FOUND/);
  });

  test("a deleted tenant's sandboxes go with it", async () => {
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    const c = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('sbx-c')).apiKey });
    const sb = await c.sandboxes.create({ runtime: 'bash' });
    const marker = `sleep 9${Math.floor(Math.random() * 1000) + 1000}`;
    await sb.commands.run(['sh', '-c', `${marker} >/dev/null 2>&1 &`]);
    assert.equal(processesWith(marker).length, 1);
    await admin.tenants.delete('sbx-c');
    await waitFor(async () => processesWith(marker).length === 0, 10_000, "the deleted tenant's sandbox is gone");
  });

  test('delete leaves nothing behind: no process, cgroup, mount or dir', async () => {
    const ownerId = ownerIdOf(server.dataDir);
    const sb: Sandbox = await a.sandboxes.create({ runtime: 'bash' });
    const marker = `sleep 7${Math.floor(Math.random() * 1000) + 1000}`;
    await sb.commands.run(['sh', '-c', `${marker} >/dev/null 2>&1 &`]);
    const [pid] = processesWith(marker);
    assert.ok(pid !== undefined);
    // The sandbox's own cgroup (one per v1 controller), read from its process.
    const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .filter((line) => line.includes(`/kindling/${ownerId}/`))
      .map((line) => line.split(':')[2]!);
    assert.ok(cgroups.length > 0, 'the command runs in a cgroup of this server');
    const dirs = cgroupsOf(ownerId).filter((dir) => cgroups.some((path) => dir.endsWith(path)));
    assert.ok(dirs.length > 0);
    await sb.kill();
    await assert.rejects(sb.refresh(), NotFoundError);
    assert.deepEqual(processesWith(marker), []);
    assert.deepEqual(dirs.filter((dir) => existsSync(dir)), [], 'the cgroup is removed');
    const agents = join(server.dataDir, 'run', 'sandbox');
    const leftovers = execFileSync('find', [agents, '-path', `*${sb.id}*`], { encoding: 'utf8' }).trim();
    assert.equal(leftovers, '');
    assert.deepEqual(mountsUnder(sb.id), []);
    assert.equal(existsSync(diskLayout(join(server.dataDir, 'run', 'sandbox-storage', ownerId)).disk(sb.id)), false, 'the disk is removed');
    assert.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(sb.id), false, 'no loop device is left');
  });

  /* -- snapshots and forks ------------------------------------------------------------------------------------------ */

  test('snapshots are immutable; forks and fromSnapshot start from them and never see each other; caps refuse first', async () => {
    const ownerId = ownerIdOf(server.dataDir);
    const storageDir = join(server.dataDir, 'run', 'sandbox-storage', ownerId);
    const parent = await a.sandboxes.create({ runtime: 'bash', limits: { diskMb: 16 }, env: { WHO: 'parent' } });
    const storage = diskLayout(storageDir);
    const made: Sandbox[] = [];
    try {
      assert.deepEqual(parent.info.storage, { persistent: true, fromSnapshot: null });
      await parent.files.write('state.txt', 'v1');
      await parent.commands.run(['sh', '-c', 'mkdir -p d && head -c 100000 /dev/urandom > d/blob && ln -s /etc/hostname link']);
      const snap = await parent.snapshot();
      assert.match(snap.id, /^snap_/);
      assert.equal(snap.sandboxId, parent.id);
      assert.equal(snap.memory, false);
      assert.match(snap.note, /no memory or processes/);
      assert.ok(snap.bytes >= 100_000, `bytes ${snap.bytes}`);
      assert.deepEqual((await a.sandboxes.listSnapshots({ sandboxId: parent.id })).map((s) => s.id), [snap.id]);
      assert.equal((await a.sandboxes.getSnapshot(snap.id)).bytes, snap.bytes);
      await assert.rejects(b.sandboxes.getSnapshot(snap.id), (error: unknown) => error instanceof NotFoundError && error.code === 'SNAPSHOT_NOT_FOUND');
      await assert.rejects(b.sandboxes.create({ fromSnapshot: snap.id }), NotFoundError);

      // Immutable: the parent's later writes do not reach it.
      await parent.files.write('state.txt', 'v2 parent');
      const child = await a.sandboxes.create({ fromSnapshot: snap.id });
      made.push(child);
      assert.deepEqual([child.info.runtime, child.info.limits.diskMb, child.info.storage.fromSnapshot], ['bash', 16, snap.id]);
      assert.equal(await child.files.read('state.txt'), 'v1');
      assert.equal((await child.commands.run(['sh', '-c', 'wc -c < d/blob; readlink link'])).stdout, '100000\n/etc/hostname\n');
      await child.files.write('state.txt', 'v2 child');
      assert.equal(await parent.files.read('state.txt'), 'v2 parent');
      await child.kill();
      made.pop();

      // A fork count the cap (3 live) cannot take is refused before anything is made.
      const before = readdirSync(storage.snapshots).length;
      await assert.rejects(parent.fork(3), (error: unknown) => error instanceof RateLimitError && error.code === 'TENANT_SANDBOX_LIMIT');
      await assert.rejects(parent.fork(4), (error: unknown) => error instanceof ValidationError && error.code === 'LIMIT_OUT_OF_RANGE');
      assert.equal(readdirSync(storage.snapshots).length, before, 'no snapshot was made');
      assert.equal((await a.sandboxes.list({ state: 'running' })).length, 1);

      const forks = await parent.fork(2);
      made.push(...forks);
      assert.equal(forks.length, 2);
      const [f1, f2] = forks as [Sandbox, Sandbox];
      assert.deepEqual(await Promise.all(forks.map((f) => f.files.read('state.txt'))), ['v2 parent', 'v2 parent']);
      assert.equal((await f1.commands.run(['sh', '-c', 'echo $WHO'])).stdout, 'parent\n', 'forks get the parent\'s env');
      await f1.files.write('state.txt', 'f1');
      await f2.commands.run(['sh', '-c', 'echo f2 > state.txt; rm d/blob']);
      await parent.files.write('state.txt', 'v3 parent');
      assert.deepEqual(await Promise.all([f1, f2, parent].map((s) => s.files.read('state.txt'))), ['f1', 'f2\n', 'v3 parent']);
      assert.equal((await f1.commands.run(['test', '-f', 'd/blob'])).exitCode, 0, "f2's delete is its own");
      const forkSnap = forks[0]!.info.storage.fromSnapshot!;
      await assert.rejects(a.sandboxes.deleteSnapshot(forkSnap), (error: unknown) => error instanceof ConflictError && error.code === 'SNAPSHOT_IN_USE');
      for (const fork of forks) await fork.kill();
      made.length = 0;
      await a.sandboxes.deleteSnapshot(forkSnap);
      await a.sandboxes.deleteSnapshot(snap.id);
      await assert.rejects(a.sandboxes.getSnapshot(snap.id), NotFoundError);
      assert.deepEqual(readdirSync(storage.snapshots), [], 'the snapshots\' files are removed');
    } finally {
      for (const sb of made) await sb.kill().catch(() => {});
      await parent.kill();
    }
    assert.deepEqual(readdirSync(storage.disks), [], 'no disk is left');
    assert.deepEqual(mountsUnder(parent.id), []);
    assert.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(join(storageDir, 'disks')), false, 'no loop device of a sandbox is left');
  });

  test('file uploads and downloads need no process in the sandbox: they work while its pids are used up; a full disk is 413 and keeps nothing', async () => {
    const sb = await a.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 8, pids: 16 } });
    try {
      const data = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7) % 251);
      assert.deepEqual(await sb.files.write('/work/keep.bin', data), { path: '/work/keep.bin', size: data.length });
      // Every pid the sandbox may have is taken (its cgroup's pids.max): a command there could not even fork.
      await sb.commands.run(['sh', '-c', 'while :; do sleep 600 & done'], { background: true });
      const ownerId = ownerIdOf(server.dataDir);
      await waitFor(async () => cgroupsOf(ownerId).some(pidsUsedUp), 30_000, "the sandbox's cgroup to reach its pids.max");
      const bounded = <T>(work: Promise<T>): Promise<T> => Promise.race([work, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 30 s')), 30_000).unref())]);
      assert.deepEqual(await bounded(sb.files.write('/work/up/new.bin', data)), { path: '/work/up/new.bin', size: data.length });
      assert.deepEqual(await bounded(sb.files.readBytes('/work/keep.bin')), data);
      assert.deepEqual(await bounded(sb.files.readBytes('/work/up/new.bin')), data);
    } finally {
      await sb.kill();
    }
    // The disk quota (diskMb) holds for uploads: 413 SANDBOX_DISK_FULL, and nothing of the file is kept.
    const small = await a.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 8 } });
    try {
      // A large upload (the splice relay) through a symlink the user planted: written inside the sandbox, through it.
      assert.equal((await small.commands.run(['sh', '-c', 'mkdir sub && ln -s sub/target.bin link.bin'])).exitCode, 0);
      const large = new Uint8Array(4.5 * 1024 * 1024).map((_, i) => i % 253);
      assert.deepEqual(await small.files.write('/work/link.bin', large), { path: '/work/link.bin', size: large.length });
      assert.deepEqual(await small.files.readBytes('/work/sub/target.bin'), large);
      await small.files.remove('/work/sub');
      const five = new Uint8Array(5 * 1024 * 1024).fill(1);
      await small.files.write('/work/one.bin', five);
      await assert.rejects(small.files.write('/work/two.bin', five), (error: unknown) => error instanceof ValidationError && error.code === 'SANDBOX_DISK_FULL');
      await assert.rejects(small.files.read('/work/two.bin'), NotFoundError);
      assert.equal((await small.files.readBytes('/work/one.bin')).length, five.length, 'the file written before is intact');
    } finally {
      await small.kill();
    }
  });

  test('a full disk is ENOSPC inside the sandbox; a snapshot of a deleted sandbox is a 404', async () => {
    const sb = await a.sandboxes.create({ runtime: 'bash', limits: { diskMb: 8 } });
    const full = await sb.commands.run(['sh', '-c', 'head -c 20000000 /dev/zero > big; echo $?']);
    // ext4 disks: ENOSPC; btrfs (a qgroup limit per sandbox): EDQUOT. Either way the writing process's own error.
    assert.match(full.stderr, /No space left on device|Disk quota exceeded/);
    await sb.kill();
    await assert.rejects(sb.snapshot(), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
  });
});

/**
 * Where the sandbox executor keeps persistent sandboxes' files under `storage` (<dataDir>/run/sandbox-storage/OWNER):
 * on btrfs (the default where the host has it) subvolumes fs/disks/ID and fs/snapshots/ID; else ext4 images
 * disks/ID.ext4 and snapshot dirs snapshots/ID.
 */
function diskLayout(storage: string): { disks: string; snapshots: string; disk: (id: string) => string } {
  if (existsSync(join(storage, 'volume.btrfs'))) {
    return { disks: join(storage, 'fs', 'disks'), snapshots: join(storage, 'fs', 'snapshots'), disk: (id) => join(storage, 'fs', 'disks', id) };
  }
  return { disks: join(storage, 'disks'), snapshots: join(storage, 'snapshots'), disk: (id) => join(storage, 'disks', `${id}.ext4`) };
}

/** Parent cgroups the docker executor of `ownerId` made (one per v1 controller; v2: one). */
function dockerCgroupsOf(ownerId: string): string[] {
  const found: string[] = [];
  const mount = '/sys/fs/cgroup';
  for (const controller of readdirSync(mount, { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name)) {
    for (const dir of [join(mount, controller, 'kindling-docker', ownerId), join(mount, 'kindling-docker', ownerId)]) if (existsSync(dir)) found.push(dir);
  }
  return [...new Set(found)];
}

describe('persistent sandboxes (docker executor)', { skip: dockerMissing ?? false }, () => {
  let server: TestServer;
  let a: Kindling;
  let b: Kindling;

  before(async () => {
    server = await startTestServer({ executor: 'docker', adminKey: ADMIN });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    a = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('dsbx-a')).apiKey });
    b = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('dsbx-b')).apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  test('create, commands, files, pause/resume, another tenant 404, delete; no container or cgroup is left', async () => {
    const ownerId = ownerIdOf(server.dataDir);
    const sb = await a.sandboxes.create({ runtime: 'bash', executor: 'docker', limits: { memoryMb: 128, diskMb: 16 } });
    let deleted = false;
    try {
      assert.equal(sb.state, 'running');
      assert.equal(sb.info.executor, 'docker');
      const owned = await docker.listContainers({ filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) });
      assert.equal(owned.length, 1, 'one container holds the sandbox');
      assert.equal(owned[0]!.HostConfig.NetworkMode, 'none');

      // Processes and files persist between commands; a timeout kills the command only.
      const started = await sb.commands.run(['sh', '-c', 'sleep 600 >/dev/null 2>&1 & echo $!']);
      const pid = started.stdout.trim();
      assert.match(pid, /^\d+$/, started.stderr);
      assert.equal((await sb.commands.run(['sh', '-c', `tr '\\0' ' ' < /proc/${pid}/cmdline`])).stdout.trim(), 'sleep 600');
      assert.equal((await sb.commands.run(['sh', '-c', 'cat > /tmp/in.txt; wc -c < /tmp/in.txt'], { stdin: 'abcd' })).stdout.trim(), '4');
      const failed = await sb.commands.run(['sh', '-c', 'echo oops >&2; exit 7'], { workdir: '/tmp', env: { X: '1' } });
      assert.deepEqual([failed.exitCode, failed.stderr, failed.timedOut], [7, 'oops\n', false]);
      const slow = await sb.commands.run(['sh', '-c', 'sleep 300 & sleep 301; echo never'], { timeoutMs: 500 });
      assert.deepEqual([slow.timedOut, slow.exitCode, slow.stdout], [true, 137, '']);
      const seen = await sb.commands.run(['sh', '-c', `for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done`]);
      assert.match(seen.stdout, /sleep 600/);
      assert.doesNotMatch(seen.stdout, /sleep 30[01]/, 'the timed-out command and its child were killed');

      // Files, through commands inside the container.
      assert.deepEqual(await sb.files.write('dir/hello.txt', 'hi from the API'), { path: '/work/dir/hello.txt', size: 15 });
      assert.equal(await sb.files.read('/work/dir/hello.txt'), 'hi from the API');
      assert.equal((await sb.commands.run(['cat', 'dir/hello.txt'])).stdout, 'hi from the API');
      assert.deepEqual((await sb.files.list('dir')).map((e) => [e.name, e.type, e.size]), [['hello.txt', 'file', 15]]);
      await assert.rejects(sb.files.write('/usr/bin/evil', 'x'), (error: unknown) => error instanceof ValidationError && /read-only/.test(error.message));
      await sb.files.remove('dir');
      await assert.rejects(sb.files.read('dir/hello.txt'), NotFoundError);

      // Another tenant sees nothing of it.
      await assert.rejects(b.sandboxes.get(sb.id), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
      await assert.rejects(b.sandboxes.run(sb.id, ['true']), NotFoundError);
      await assert.rejects(b.sandboxes.delete(sb.id), NotFoundError);

      // Pause stops CPU; resume continues.
      await sb.commands.run(['sh', '-c', 'while :; do :; done >/dev/null 2>&1 &']);
      await waitFor(async () => (await sb.refresh()).usage!.cpuMs! > 100, 30_000, 'the busy loop uses CPU');
      await sb.pause();
      assert.equal(sb.state, 'paused');
      const inspected = await docker.getContainer(owned[0]!.Id).inspect();
      assert.equal(inspected.State.Paused, true);
      const cpu1 = (await sb.refresh()).usage!.cpuMs!;
      const start = Date.now();
      await waitFor(async () => Date.now() - start > 1000, 5000, 'a second passes');
      const cpu2 = (await sb.refresh()).usage!.cpuMs!;
      assert.ok(cpu2 - cpu1 < 5, `a paused sandbox used ${cpu2 - cpu1} ms of CPU`);
      await assert.rejects(sb.commands.run(['true'], { autoResume: false }), (error: unknown) => error instanceof ConflictError && error.code === 'SANDBOX_PAUSED');
      await sb.resume();
      assert.equal(sb.state, 'running');
      await waitFor(async () => (await sb.refresh()).usage!.cpuMs! > cpu2 + 100, 30_000, 'the loop goes on after resume');
      await sb.pause();
      assert.equal((await sb.commands.run(['echo', 'auto'])).stdout, 'auto\n', 'a command resumes a paused sandbox');

      assert.ok(dockerCgroupsOf(ownerId).length > 0, 'the sandbox is metered in a cgroup of this server');
      await sb.kill();
      deleted = true;
      await assert.rejects(sb.refresh(), NotFoundError);
      assert.deepEqual(await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) }), [], 'the container is removed');
      assert.deepEqual(dockerCgroupsOf(ownerId), [], 'its cgroups are removed');
    } finally {
      if (!deleted) await sb.kill();
    }
  });

  /* -- files on a disk of their own: snapshots, forks, a full disk, a container that died ---------------------------- */

  test('files live on a disk of their own: snapshots, fromSnapshot and forks never see each other; a full disk is ENOSPC inside; delete leaves no mount, loop device or disk', async () => {
    const ownerId = ownerIdOf(server.dataDir);
    const storage = join(server.dataDir, 'run', 'docker-sandbox-storage', ownerId);
    const parent = await a.sandboxes.create({ runtime: 'bash', executor: 'docker', limits: { diskMb: 16 }, env: { WHO: 'parent' } });
    const made: Sandbox[] = [];
    try {
      assert.deepEqual(parent.info.storage, { persistent: true, fromSnapshot: null });
      await parent.files.write('state.txt', 'v1');
      await parent.commands.run(['sh', '-c', 'mkdir -p d && head -c 100000 /dev/urandom > d/blob && ln -s /etc/hostname link && echo t > /tmp/t']);
      // The disk is the kernel's limit: ENOSPC in the process, the sandbox lives on, the host's disk is untouched.
      const full = await parent.commands.run(['sh', '-c', 'head -c 40000000 /dev/zero > big; echo $?; rm -f big']);
      assert.match(full.stderr, /No space left on device/);
      assert.notEqual(full.stdout.trim(), '0');
      const snap = await parent.snapshot();
      assert.equal(snap.memory, false);
      assert.ok(snap.bytes >= 100_000, `bytes ${snap.bytes}`);
      assert.deepEqual(readdirSync(join(storage, 'snapshots')), [snap.id]);

      await parent.files.write('state.txt', 'v2 parent');
      const child = await a.sandboxes.create({ fromSnapshot: snap.id });
      made.push(child);
      assert.deepEqual([child.info.executor, child.info.limits.diskMb, child.info.storage.fromSnapshot], ['docker', 16, snap.id]);
      assert.equal(await child.files.read('state.txt'), 'v1');
      assert.equal((await child.commands.run(['sh', '-c', 'wc -c < d/blob; readlink link'])).stdout, '100000\n/etc/hostname\n');
      await child.files.write('state.txt', 'v2 child');
      assert.equal(await parent.files.read('state.txt'), 'v2 parent');

      const forks = await parent.fork(2);
      made.push(...forks);
      const [f1, f2] = forks as [Sandbox, Sandbox];
      assert.deepEqual([f1.info.executor, (await f1.commands.run(['sh', '-c', 'echo $WHO'])).stdout], ['docker', 'parent\n'], "forks run on docker with the parent's env");
      await f1.files.write('state.txt', 'f1');
      await f2.commands.run(['sh', '-c', 'echo f2 > state.txt; rm d/blob']);
      assert.deepEqual(await Promise.all([f1, f2, parent, child].map((s) => s.files.read('state.txt'))), ['f1', 'f2\n', 'v2 parent', 'v2 child']);
      assert.equal((await f1.commands.run(['test', '-f', 'd/blob'])).exitCode, 0, "f2's delete is its own");
      const forkSnap = f1.info.storage.fromSnapshot!;
      for (const sb of made) await sb.kill();
      made.length = 0;
      await a.sandboxes.deleteSnapshot(forkSnap);
      await a.sandboxes.deleteSnapshot(snap.id);
      assert.deepEqual(readdirSync(join(storage, 'snapshots')), [], "the snapshots' files are removed");
    } finally {
      for (const sb of made) await sb.kill().catch(() => {});
      await parent.kill();
    }
    assert.deepEqual(readdirSync(join(storage, 'disks')), [], 'no disk is left');
    assert.deepEqual(mountsUnder(server.dataDir).filter((line) => line.includes('docker-volumes')), [], 'no disk is mounted');
    assert.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(storage), false, 'no loop device is left');
    assert.deepEqual(await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) }), []);
  });

  test('a sandbox whose container died is stopped with its files, and the next command starts a new container on them', async () => {
    const ownerId = ownerIdOf(server.dataDir);
    const sb = await a.sandboxes.create({ runtime: 'bash', executor: 'docker', env: { KEPT: 'yes' } });
    try {
      await sb.files.write('notes/kept.txt', 'survives the container');
      await sb.commands.run(['sh', '-c', 'echo in-tmp > /tmp/t']);
      const [container] = await docker.listContainers({ filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) });
      assert.ok(container !== undefined);
      await docker.getContainer(container.Id).kill({ signal: 'SIGKILL' });
      await waitFor(async () => (await sb.refresh()).state === 'stopped', 30_000, 'the sandbox is stopped once its container died');
      // The files API works on the stopped sandbox (it starts it again), and a command sees /work and /tmp as they were.
      assert.equal(await sb.files.read('notes/kept.txt'), 'survives the container');
      assert.equal((await sb.commands.run(['sh', '-c', 'cat /tmp/t; echo $KEPT'])).stdout, 'in-tmp\nyes\n');
      const now = await docker.listContainers({ filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) });
      assert.deepEqual(now.map((c) => c.Id === container.Id), [false], 'a new container holds it');
    } finally {
      await sb.kill();
    }
  });
});

describe('persistent sandboxes across a server restart', { skip: unavailable ?? false }, () => {
  test('after kill -9 of the server, the next start reaps the processes, keeps the files, and the next command starts it again', async () => {
    const dataDir = await newDataDir();
    const ownerId = ownerIdOf(dataDir);
    const marker = `sleep 8${Math.floor(Math.random() * 1000) + 1000}`;
    let first: ServerProcess | null = null;
    let second: ServerProcess | null = null;
    try {
      first = await startServerProcess(dataDir, ['--executor', 'sandbox', '--prewarm', '0']);
      const client = new Kindling({ url: first.url });
      const sb = await client.sandboxes.create({ runtime: 'bash', env: { KEPT: 'yes' } });
      const gone = await client.sandboxes.create({ runtime: 'bash' });
      await sb.commands.run(['sh', '-c', `${marker} >/dev/null 2>&1 &`]);
      await sb.files.write('notes/kept.txt', 'survives kill -9');
      await sb.commands.run(['sh', '-c', 'echo in-tmp > /tmp/t']);
      const snap = await sb.snapshot();
      assert.equal(processesWith(marker).length, 1);
      await stopProcess(first.child, 'SIGKILL');
      second = await startServerProcess(dataDir, ['--executor', 'sandbox', '--prewarm', '0']);
      // Reaping goes on while the new server already answers: wait for its end (the orphan's process and cgroup gone).
      await waitFor(async () => processesWith(marker).length === 0 && (await leftovers(docker, ownerId, dataDir, [second!.child.pid!])).cgroups.length === 0, 10_000, 'the orphan and its cgroup are gone');
      const again = new Kindling({ url: second.url });
      const record = await again.sandboxes.get(sb.id);
      assert.equal(record.state, 'stopped');
      assert.match(record.stopReason ?? '', /server restarted/);
      assert.equal(record.storage.persistent, true);
      // No sandbox cgroup is left of the dead server (no prewarmed launchers here: an empty one being made would count).
      const live = await leftovers(docker, ownerId, dataDir, [second.child.pid!]);
      assert.deepEqual(live.cgroups, []);
      assert.deepEqual(live.processes, []);
      assert.equal((await again.sandboxes.getSnapshot(snap.id)).bytes, snap.bytes, 'the snapshot survives too');
      // The files API starts it again: a new process tree on the same files, with its env.
      assert.equal(new TextDecoder().decode(await again.sandboxes.readFile(sb.id, 'notes/kept.txt')), 'survives kill -9');
      assert.equal((await again.sandboxes.get(sb.id)).state, 'running');
      const ran = await again.sandboxes.run(sb.id, ['sh', '-c', 'cat /tmp/t; echo $KEPT']);
      assert.equal(ran.stdout, 'in-tmp\nyes\n');
      await again.sandboxes.delete(gone.id);
      const fork = await again.sandboxes.create({ fromSnapshot: snap.id });
      assert.equal(await fork.files.read('notes/kept.txt'), 'survives kill -9');
      await fork.kill();
      await again.sandboxes.deleteSnapshot(snap.id);
      const layout = diskLayout(join(dataDir, 'run', 'sandbox-storage', ownerId));
      assert.deepEqual(readdirSync(layout.disks), [basename(layout.disk(sb.id))]);
      await again.sandboxes.delete(sb.id);
      await stopProcess(second.child, 'SIGTERM');
      const left = await leftovers(docker, ownerId, dataDir);
      assert.ok(nothingLeft(left), JSON.stringify(left));
    } finally {
      if (first) await stopProcess(first.child, 'SIGKILL');
      if (second) await stopProcess(second.child, 'SIGTERM');
      await rm(dataDir, { recursive: true, force: true }).catch((error: unknown) => console.error('could not remove the data dir', error));
    }
  });

  // -- start-up reaping of disks and snapshots (sbx-parity) --
  test('start-up reaping removes the disk and snapshot files whose records are gone and keeps those whose records exist', async () => {
    const dataDir = await newDataDir();
    const ownerId = ownerIdOf(dataDir);
    const storage = join(dataDir, 'run', 'sandbox-storage', ownerId);
    let first: ServerProcess | null = null;
    let second: ServerProcess | null = null;
    try {
      first = await startServerProcess(dataDir, ['--executor', 'sandbox', '--prewarm', '0']);
      const client = new Kindling({ url: first.url });
      const kept = await client.sandboxes.create({ runtime: 'bash' });
      const dropped = await client.sandboxes.create({ runtime: 'bash' });
      await kept.files.write('kept.txt', 'kept');
      await dropped.files.write('dropped.txt', 'dropped');
      const keptSnap = await kept.snapshot();
      const droppedSnap = await dropped.snapshot();
      const layout = diskLayout(storage);
      assert.deepEqual(readdirSync(layout.disks).sort(), [dropped.id, kept.id].map((id) => basename(layout.disk(id))).sort());
      assert.deepEqual(readdirSync(layout.snapshots).sort(), [droppedSnap.id, keptSnap.id].sort());
      await stopProcess(first.child, 'SIGKILL');
      first = null;
      // The records of one sandbox and one snapshot vanish while no server runs (as after a crash between removing a
      // record and its files); their files stay behind on disk.
      const db = new Database(join(dataDir, 'kindling.db'));
      try {
        assert.equal(db.prepare('DELETE FROM sandboxes WHERE id = ?').run(dropped.id).changes, 1);
        assert.equal(db.prepare('DELETE FROM sandbox_snapshots WHERE id = ?').run(droppedSnap.id).changes, 1);
      } finally {
        db.close();
      }
      assert.ok(existsSync(layout.disk(dropped.id)) && existsSync(join(layout.snapshots, droppedSnap.id)));
      // The server answers only once reaping is done.
      second = await startServerProcess(dataDir, ['--executor', 'sandbox', '--prewarm', '0']);
      assert.deepEqual(readdirSync(layout.disks), [basename(layout.disk(kept.id))], 'the orphaned disk is removed, the recorded one kept');
      assert.deepEqual(readdirSync(layout.snapshots), [keptSnap.id], 'the orphaned snapshot is removed, the recorded one kept');
      const again = new Kindling({ url: second.url });
      await assert.rejects(again.sandboxes.get(dropped.id), NotFoundError);
      await assert.rejects(again.sandboxes.getSnapshot(droppedSnap.id), NotFoundError);
      // What was kept still works: the sandbox's files, and a sandbox made from the kept snapshot.
      assert.equal(new TextDecoder().decode(await again.sandboxes.readFile(kept.id, 'kept.txt')), 'kept');
      const restored = await again.sandboxes.create({ fromSnapshot: keptSnap.id });
      assert.equal(await restored.files.read('kept.txt'), 'kept');
      await restored.kill();
      await again.sandboxes.delete(kept.id);
      await again.sandboxes.deleteSnapshot(keptSnap.id);
      assert.deepEqual(readdirSync(layout.disks), []);
      assert.deepEqual(readdirSync(layout.snapshots), []);
      await stopProcess(second.child, 'SIGTERM');
      second = null;
      const left = await leftovers(docker, ownerId, dataDir);
      assert.ok(nothingLeft(left), JSON.stringify(left));
    } finally {
      if (first) await stopProcess(first.child, 'SIGKILL');
      if (second) await stopProcess(second.child, 'SIGTERM');
      await rm(dataDir, { recursive: true, force: true }).catch((error: unknown) => console.error('could not remove the data dir', error));
    }
  });
});

describe('persistent sandboxes on docker across a server restart', { skip: dockerMissing ?? false }, () => {
  test('after kill -9 of the server, the next start removes the orphaned container and its mounts, lists the sandbox as stopped, and its files are intact', async () => {
    const dataDir = await newDataDir();
    const ownerId = ownerIdOf(dataDir);
    const storage = join(dataDir, 'run', 'docker-sandbox-storage', ownerId);
    // The containers holding a sandbox's disk (a server also keeps containers of its own, such as generic warm ones).
    const owned = async (): Promise<string[]> =>
      (await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) }))
        .filter((c) => c.Mounts.some((mount) => mount.Source.includes('docker-volumes')))
        .map((c) => c.Id);
    let first: ServerProcess | null = null;
    let second: ServerProcess | null = null;
    try {
      first = await startServerProcess(dataDir, ['--executor', 'docker', '--prewarm', '0']);
      const client = new Kindling({ url: first.url });
      const sb = await client.sandboxes.create({ runtime: 'bash', executor: 'docker', env: { KEPT: 'yes' } });
      await sb.files.write('notes/kept.txt', 'survives kill -9');
      await sb.commands.run(['sh', '-c', 'head -c 1000000 /dev/urandom > blob; sha256sum blob > blob.sum; echo in-tmp > /tmp/t']);
      const sum = (await sb.commands.run(['cat', 'blob.sum'])).stdout;
      const snap = await sb.snapshot();
      const orphan = await owned();
      assert.equal(orphan.length, 1);
      await stopProcess(first.child, 'SIGKILL');
      first = null;
      second = await startServerProcess(dataDir, ['--executor', 'docker', '--prewarm', '0']);
      // Reaping may go on while the new server already answers: wait for its end (the orphan and its mounts gone).
      const mounted = (): string[] => mountsUnder(dataDir);
      await waitFor(async () => (await owned()).length === 0 && mounted().filter((line) => line.includes('docker-volumes')).length === 0, 30_000, 'the orphaned container and its mounts are gone');
      const again = new Kindling({ url: second.url });
      const listed = await again.sandboxes.list();
      assert.deepEqual(listed.map((s) => [s.id, s.state, s.executor]), [[sb.id, 'stopped', 'docker']]);
      assert.match(listed[0]!.stopReason ?? '', /server restarted/);
      assert.equal((await again.sandboxes.getSnapshot(snap.id)).bytes, snap.bytes, 'the snapshot survives too');
      // The files API starts it again: a new container on the same disk, with its env.
      assert.equal(new TextDecoder().decode(await again.sandboxes.readFile(sb.id, 'notes/kept.txt')), 'survives kill -9');
      assert.equal((await again.sandboxes.get(sb.id)).state, 'running');
      const ran = await again.sandboxes.run(sb.id, ['sh', '-c', 'sha256sum -c blob.sum >/dev/null && cat blob.sum /tmp/t; echo $KEPT']);
      assert.equal(ran.stdout, `${sum}in-tmp\nyes\n`, ran.stderr);
      assert.notDeepEqual(await owned(), orphan, 'a new container holds it');
      const fork = await again.sandboxes.create({ fromSnapshot: snap.id });
      assert.equal(await fork.files.read('notes/kept.txt'), 'survives kill -9');
      await fork.kill();
      await again.sandboxes.deleteSnapshot(snap.id);
      await again.sandboxes.delete(sb.id);
      assert.deepEqual(readdirSync(join(storage, 'disks')), []);
      await stopProcess(second.child, 'SIGTERM');
      second = null;
      const left = await leftovers(docker, ownerId, dataDir);
      assert.ok(nothingLeft(left), JSON.stringify(left));
      assert.deepEqual(await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) }), []);
      assert.deepEqual(mounted(), []);
      assert.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(dataDir), false, 'no loop device is left');
    } finally {
      if (first) await stopProcess(first.child, 'SIGKILL');
      if (second) await stopProcess(second.child, 'SIGTERM');
      for (const c of await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
      for (const line of mountsUnder(dataDir).reverse()) execFileSync('umount', ['-l', line.split(' ')[4]!]);
      await rm(dataDir, { recursive: true, force: true }).catch((error: unknown) => console.error('could not remove the data dir', error));
    }
  });
});
