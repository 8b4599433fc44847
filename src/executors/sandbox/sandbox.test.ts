// Over 400 lines: integration cases of the sandbox's isolation, each against the real bwrap and cgroups.
/**
 * Escape and abuse tests of the sandbox executor against real bubblewrap, real cgroups and the project's runtime
 * images (KINDLING_IMAGES_DIR, default /var/lib/kindling/images). Each case asserts containment and that the next
 * execution still works. Skips, with the reason, when the host cannot run the sandbox (not root, no bwrap, no images).
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it, type TestContext } from 'node:test';
import { isKindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { testSpec, type CompletedRun } from '../conformance.js';
import { DENIED_SYSCALLS_X86_64 } from './seccomp.js';
import { SandboxExecutor } from './index.js';
import { DEFAULT_LAUNCH_HELPER_PATH } from './launcher.js';
import { skipOrFail } from '../test-support.js';
import { waitFor } from '../../../test/helpers/wait.js';

const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
const PYTHON = 'kindling/python';
const owner = `test-sbx-${process.pid}`;
let executor: SandboxExecutor | null = null;
let skipReason = '';
// The sandbox uid must be able to reach run dirs under it: mkdtemp makes 0700.
const stateDir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-test-'));
chmodSync(stateDir, 0o755);

before(async () => {
  if (process.getuid?.() !== 0) {
    skipReason = 'the sandbox executor needs root (it creates cgroups)';
    return;
  }
  executor = new SandboxExecutor({ imagesDir, stateDir, ownerId: owner, instanceId: 'test' });
  const status = await executor.probe();
  if (!status.ready) skipReason = `sandbox not ready: ${status.reason}`;
  else if (!executor.hasImage(PYTHON)) skipReason = `image ${PYTHON} has no rootfs in ${imagesDir}: run "kindling images build"`;
  if (skipReason) {
    await executor.destroy();
    executor = null;
    skipOrFail('sandbox', skipReason);
  }
});

after(async () => {
  await executor?.destroy();
  rmSync(stateDir, { recursive: true, force: true });
});

function ready(t: TestContext): SandboxExecutor | null {
  if (executor === null) {
    t.skip(skipReason);
    return null;
  }
  return executor;
}

function py(code: string, overrides: Partial<RunSpec> = {}): RunSpec {
  return testSpec({ command: ['python3', '-c', code], ...overrides }, PYTHON);
}

function sh(script: string, overrides: Partial<RunSpec> = {}): RunSpec {
  return testSpec({ command: ['sh', '-c', script], ...overrides }, PYTHON);
}

const out = (run: CompletedRun): string => run.stdout.toString();
const err = (run: CompletedRun): string => run.stderr.toString();

function hostProcessesWith(marker: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmdline.includes(marker)) found.push(`${pid}: ${cmdline}`);
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/** Every place a sandbox named `id` may leave something: its cgroup dirs (v1 and v2) and its run dir. */
function leftoversOf(id: string, ownerId = owner): string[] {
  const places = ['memory', 'pids', 'cpu', 'freezer'].map((c) => `/sys/fs/cgroup/${c}/kindling/${ownerId}/${id}`);
  places.push(`/sys/fs/cgroup/kindling/${ownerId}/${id}`);
  // Run dirs live in each executor instance's private mount dir: <stateDir>/sandbox/<random>/runs.
  const instances = existsSync(join(stateDir, 'sandbox')) ? readdirSync(join(stateDir, 'sandbox')) : [];
  for (const instance of instances) places.push(join(stateDir, 'sandbox', instance, 'runs', id));
  return places.filter((p) => existsSync(p));
}

interface TrackedRun extends CompletedRun {
  id: string;
  coldStart: boolean;
  /** Whether the executor's own backstop killed it (not a caller's kill()). */
  timedOut: boolean;
}

/** runToCompletion, also returning the sandbox id so that its leftovers can be checked. `killOnOutput`: kill() as soon as the process has written its first stdout bytes (so it is running, whatever the
 *  load), as the orchestrator kills at timeoutMs. */
async function run(ex: SandboxExecutor, spec: RunSpec, options: { stdin?: Buffer; killOnOutput?: boolean } = {}): Promise<TrackedRun> {
  const startedAt = performance.now();
  const execution = await ex.start({ ...spec, stdin: spec.stdin || options.stdin !== undefined });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  execution.stdout.on('data', (c: Buffer) => {
    if (options.killOnOutput && stdout.length === 0) execution.kill();
    stdout.push(c);
  });
  execution.stderr.on('data', (c: Buffer) => stderr.push(c));
  execution.stdin?.end(options.stdin);
  const exit = await execution.wait();
  await execution.disposed;
  const result = { ...exit, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr), wallMs: performance.now() - startedAt };
  return { ...result, id: execution.id, coldStart: execution.coldStart };
}

describe('sandbox executor: escape and abuse', () => {
  it('shows no host file outside the read-only rootfs', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const secret = `/tmp/kindling-host-secret-${process.pid}`;
    writeFileSync(secret, 'HOST-SECRET');
    try {
      const r = await run(
        ex,
        sh(`cat ${secret} 2>&1; ls -A /tmp; test -e /work/main && echo SAW-WORK-MAIN; ls /sys 2>&1 | head -3; cat /proc/self/mountinfo`),
      );
      assert.ok(!out(r).includes('HOST-SECRET'), out(r));
      assert.ok(!out(r).includes('SAW-WORK-MAIN'));
      assert.match(out(r), /No such file or directory/);
      // Every mount of a disk file system is the image: its private overlay (whose only layer from disk is the image's
      // rootfs, see private-mounts.ts), whole at / or an entry of it, or, where that cannot be mounted, a bind from
      // inside the rootfs.
      const rootfs = `${imagesDir}/python/rootfs`;
      const diskMounts = out(r)
        .split('\n')
        .filter((l) => / - (ext4|ext3|xfs|btrfs|overlay|zfs|vfat) /.test(l));
      assert.ok(diskMounts.length > 0);
      for (const line of diskMounts) {
        const root = line.split(' ')[3]!;
        const image = / - overlay kindling-image ro,lowerdir=\/proc\/self\/fd\/3:\/proc\/self\/fd\/4:\/proc\/self\/fd\/5[, ]/.test(line) && /^\/[^/]*$/.test(root);
        assert.ok(image || root.startsWith(rootfs), `host path ${root} is mounted: ${line}`);
      }
      assert.ok(!out(r).includes(imagesDir) && !out(r).includes(stateDir), `a host path shows in mountinfo:\n${out(r)}`);
    } finally {
      rmSync(secret, { force: true });
    }
  });

  it('keeps the rootfs read-only (the image on the host is unchanged)', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const r = await run(
      ex,
      sh('for p in /usr/owned /etc/owned /owned /bin/owned /.kindling/owned /dev/owned; do touch $p; done; echo x >> /etc/passwd; chmod 777 /usr; echo done'),
    );
    assert.equal(out(r), 'done\n');
    // Seven writes; `chmod 777 /usr` fails too (EROFS on the image's overlay, EPERM on a plain bind of the rootfs).
    assert.ok((err(r).match(/Read-only file system/g)?.length ?? 0) >= 7, err(r));
    assert.match(err(r), /chmod: changing permissions of '\/usr': (Read-only file system|Operation not permitted)/);
    assert.match(err(r), /\/etc\/passwd: (Permission denied|Read-only file system)/);
    for (const p of ['usr/owned', 'etc/owned', 'owned', 'bin/owned']) {
      assert.equal(existsSync(`${imagesDir}/python/rootfs/${p}`), false);
    }
  });

  it('denies unshare -U, mount and the other listed syscalls with EPERM (seccomp, no caps, no-new-privs)', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const cli = await run(ex, sh('unshare -U true; echo unshare=$?; unshare -r true; echo unshare_r=$?; mount -t tmpfs x /tmp; echo mount=$?'));
    assert.match(out(cli), /unshare=1\nunshare_r=1\nmount=32/);
    assert.match(err(cli), /unshare failed: Operation not permitted/);
    const code = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r == 0 else ctypes.get_errno()
nrs = ${JSON.stringify(DENIED_SYSCALLS_X86_64)}
for name, nr in sorted(nrs.items()):
    print(name, call(nr, 0, 0, 0, 0, 0, 0))
print('unshare_user', call(272, 0x10000000))
print('unshare_zero', call(272, 0))
print('mount_tmpfs', -1 if libc.mount(b'x', b'/tmp', b'tmpfs', 0, None) == 0 else ctypes.get_errno())
status = open('/proc/self/status').read()
for key in ('Seccomp:', 'NoNewPrivs:', 'CapEff:', 'CapBnd:'):
    print(key, [l.split()[1] for l in status.splitlines() if l.startswith(key)][0])
`;
    const r = await run(ex, py(code));
    assert.equal(r.exitCode, 0, err(r));
    const result = new Map(out(r).trim().split('\n').map((l) => l.split(' ') as [string, string]));
    for (const name of Object.keys(DENIED_SYSCALLS_X86_64)) assert.equal(result.get(name), '1', `${name} -> errno ${result.get(name)}`);
    // unshare(0) is a no-op that succeeds without seccomp: EPERM proves the filter answered.
    assert.equal(result.get('unshare_zero'), '1');
    assert.equal(result.get('unshare_user'), '1');
    assert.equal(result.get('mount_tmpfs'), '1');
    assert.equal(result.get('Seccomp:'), '2');
    assert.equal(result.get('NoNewPrivs:'), '1');
    assert.equal(result.get('CapEff:'), '0000000000000000');
    assert.equal(result.get('CapBnd:'), '0000000000000000');
  });

  it('denies ptrace of another process in the sandbox', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const code = `
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
p = subprocess.Popen(['sleep', '30'])
r = libc.ptrace(16, p.pid, None, None)  # PTRACE_ATTACH
print('attach', r, ctypes.get_errno())
r = libc.ptrace(0, 0, None, None)  # PTRACE_TRACEME
print('traceme', r, ctypes.get_errno())
try:
    open('/proc/%d/mem' % p.pid, 'rb').read(1)
except OSError as e:
    print('mem', e.errno)
p.kill()
`;
    const r = await run(ex, py(code));
    assert.match(out(r), /attach -1 1\ntraceme -1 1\n/);
  });

  it('holds the pids limit against a fork bomb, and the next execution works', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const started = performance.now();
    const bomb = await run(ex, sh('b() { b | b & }; b; sleep 2; ls /proc | grep -c "^[0-9]"', { limits: { pids: 48, timeoutMs: 4000 } as RunSpec['limits'] }));
    assert.ok(performance.now() - started < 60_000, 'the timeout backstop ends the bomb');
    // The count needs two more processes: with the limit reached it may not run, and then the shell says it could not fork.
    const count = Number(out(bomb).trim().split('\n').pop());
    if (Number.isNaN(count)) assert.match(err(bomb), /fork|resource temporarily unavailable/i);
    else assert.ok(count <= 48, `saw ${count} processes`);
    assert.deepEqual(leftoversOf(bomb.id), []);
    const next = await run(ex, sh('echo still fine'));
    assert.equal(out(next), 'still fine\n');
  });

  it('reports a memory bomb as oomKilled', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const r = await run(ex, py('x = bytearray(512 * 1024 * 1024)', { limits: { memoryMb: 64 } as RunSpec['limits'] }));
    assert.equal(r.oomKilled, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.equal(r.exitCode, 137);
  });

  it('kills a CPU spin past the timeout: the caller at timeoutMs, or the executor\'s own backstop', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    // As the orchestrator does: kill() at timeoutMs (here: once the spin has started). The caller's kill, not the
    // backstop (timedOut false), ends it.
    const byCaller = await run(ex, py("print('spinning', flush=True)\nwhile True: pass", { limits: { timeoutMs: 60_000 } as RunSpec['limits'] }), { killOnOutput: true });
    assert.equal(out(byCaller), 'spinning\n');
    assert.equal(byCaller.signal, 'SIGKILL');
    assert.equal(byCaller.timedOut, false);
    assert.deepEqual(leftoversOf(byCaller.id), []);
    // Nobody calls kill(): the backstop (timeoutMs + 1 s grace) still ends it and says timedOut.
    const spec = py('while True: pass', { limits: { timeoutMs: 300 } as RunSpec['limits'] });
    const t0 = performance.now();
    const execution = await ex.start(spec);
    execution.stdout.resume();
    execution.stderr.resume();
    const info = await execution.wait();
    await execution.disposed;
    const wall2 = performance.now() - t0;
    assert.equal(info.timedOut, true);
    assert.equal(info.signal, 'SIGKILL');
    // Not before timeoutMs + the 1 s grace (a timer never fires early); how much later depends on the machine's load.
    assert.ok(wall2 >= 1250, `took ${wall2} ms`);
    assert.deepEqual(leftoversOf(execution.id), []);
  });

  it('fills /tmp and the work dir to their size and gets ENOSPC inside', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const r = await run(
      ex,
      sh('head -c 20000000 /dev/zero > /tmp/fill; echo tmp=$?; head -c 20000000 /dev/zero > /work/fill; echo work=$?; stat -f -c %T /tmp /work; du -k /tmp/fill | cut -f1', { limits: { diskMb: 8 } as RunSpec['limits'] }),
    );
    assert.match(out(r), /tmp=1\nwork=1\ntmpfs\ntmpfs\n/);
    assert.equal(err(r).match(/No space left on device/g)?.length, 2, err(r));
    assert.ok(Number(out(r).trim().split('\n').pop()) <= 8 * 1024);
  });

  it('cannot reach a TCP port the host listens on at 127.0.0.1', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    let connections = 0;
    const server: Server = createServer((s) => {
      connections++;
      s.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const code = `
import socket
for host in ('127.0.0.1', '10.0.2.2', '1.1.1.1'):
    try:
        socket.create_connection((host, ${port}), timeout=2).close()
        print(host, 'CONNECTED')
    except OSError as e:
        print(host, type(e).__name__, e.errno)
print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]))
`;
      const r = await run(ex, py(code));
      assert.ok(!out(r).includes('CONNECTED'), out(r));
      assert.match(out(r), /127\.0\.0\.1 ConnectionRefusedError 111/);
      assert.match(out(r), /10\.0\.2\.2 OSError 101/); // ENETUNREACH
      assert.match(out(r), /\['lo'\]/);
      assert.equal(connections, 0);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('sees only its own processes in /proc', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const code = `
import os
pids = [p for p in os.listdir('/proc') if p.isdigit()]
cmds = [open('/proc/%s/cmdline' % p, 'rb').read().replace(b'\\0', b' ').replace(b'\\n', b' ').decode() for p in pids]
print(len(pids)); print('|'.join(cmds))
print(os.getpid(), os.getppid())
`;
    const r = await run(ex, py(code));
    const [count, cmds, ids] = out(r).trim().split('\n');
    assert.ok(Number(count) <= 3, `saw ${count}: ${cmds}`);
    assert.ok(!/node|dist\/src|kindling serve/.test(cmds ?? ''), cmds);
    assert.equal(ids, '2 1');
  });

  it('passes no server descriptor into the sandbox', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const r = await run(
      ex,
      py("import os\nfor fd in sorted(int(f) for f in os.listdir('/proc/self/fd')):\n  try: print(fd, os.readlink('/proc/self/fd/%d' % fd))\n  except OSError: pass"),
    );
    for (const line of out(r).trim().split('\n')) {
      const [fd, target] = line.split(' ');
      if (Number(fd) <= 2) continue;
      assert.ok(target === '/dev/null' || target?.startsWith('/proc/'), `fd ${fd} -> ${target} leaked`);
    }
  });

  it('kills a double-forked, detached process at the end and removes its cgroup', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const marker = `12${process.pid % 1000}.5`;
    // One detaches completely (new session, stdio closed), one keeps stdout open, which would hang a naive wait().
    const started = performance.now();
    const result = await run(
      ex,
      sh(`(setsid sleep ${marker} </dev/null >/dev/null 2>&1 &); (setsid sleep ${marker}1 &); echo parent-done`, {
        files: [{ name: 'x.txt', content: 'x' }],
      }),
    );
    assert.equal(out(result), 'parent-done\n');
    // The sleeps last hours: ending at all within a minute means wait() did not wait for them.
    assert.ok(performance.now() - started < 60_000);
    assert.deepEqual(hostProcessesWith(marker), []);
    assert.deepEqual(leftoversOf(result.id), []);
  });

  it('kill() during a run ends detached processes too', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const marker = `13${process.pid % 1000}.5`;
    // Killed once the detached process has been forked (the subshell returned), not after a guessed delay.
    const result = await run(ex, sh(`(setsid sleep ${marker} &); echo forked; sleep ${marker}`), { killOnOutput: true });
    assert.equal(out(result), 'forked\n');
    assert.equal(result.signal, 'SIGKILL');
    assert.deepEqual(hostProcessesWith(marker), []);
    assert.deepEqual(leftoversOf(result.id), []);
  });

  it('streams output live, before the process ends', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    // The process cannot end before it reads a line of stdin, which is sent only once the first output has arrived.
    const execution = await ex.start(sh('echo first; read line; echo "second $line"', { stdin: true }));
    execution.stderr.resume();
    const first = await new Promise<Buffer>((resolve) => execution.stdout.once('data', resolve));
    assert.equal(first.toString(), 'first\n');
    const rest: Buffer[] = [];
    execution.stdout.on('data', (chunk: Buffer) => rest.push(chunk));
    execution.stdin!.end('go\n');
    const exit = await execution.wait();
    await execution.disposed;
    assert.equal(exit.exitCode, 0);
    assert.equal(Buffer.concat(rest).toString(), 'second go\n');
  });

  it('rejects network "egress" with UNSUPPORTED_NETWORK before creating anything', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    await assert.rejects(ex.start(sh('true', { network: 'egress' })), (e: unknown) => isKindlingError(e) && e.code === 'UNSUPPORTED_NETWORK' && e.statusCode === 400);
    await assert.rejects(ex.start(sh('true', { image: 'kindling/nope' })), (e: unknown) => isKindlingError(e) && e.code === 'UNKNOWN_IMAGE');
    await assert.rejects(ex.start(sh('true', { workdir: '/usr/nope' })), (e: unknown) => isKindlingError(e) && e.code === 'VALIDATION_FAILED');
    await assert.rejects(ex.start(sh('true', { files: [{ name: '../x', content: '' }] })), (e: unknown) => isKindlingError(e) && e.code === 'VALIDATION_FAILED');
  });

  it('reap() of a restarted server kills and removes what a crashed one left', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const marker = `14${process.pid % 1000}.5`;
    const reapOwner = `${owner}-reap`;
    const crashed = new SandboxExecutor({ imagesDir, stateDir, ownerId: reapOwner, instanceId: 'crashed', prewarmPerShape: 0 });
    const execution = await crashed.start(sh(`(setsid sleep ${marker} &); echo ready; sleep ${marker}`));
    execution.stderr.resume();
    await new Promise((resolve) => execution.stdout.once('data', resolve));
    execution.stdout.resume();
    const restarted = new SandboxExecutor({ imagesDir, stateDir, ownerId: reapOwner, instanceId: 'restarted', prewarmPerShape: 0 });
    const report = await restarted.reap();
    assert.equal(report.removed, 1);
    const info = await execution.wait();
    await execution.disposed;
    assert.equal(info.signal, 'SIGKILL');
    assert.deepEqual(hostProcessesWith(marker), []);
    assert.deepEqual(leftoversOf(execution.id, reapOwner), []);
    await crashed.destroy();
    await restarted.destroy();
  });

  it('prewarmPerShape is the number of launchers kept ready (0: none, every start is cold)', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const idleOf = async (e: SandboxExecutor): Promise<number | null> => ((await e.probe()).details?.prewarm as { idle: number } | null)?.idle ?? null;
    const three = new SandboxExecutor({ imagesDir, stateDir, ownerId: `${owner}-pw3`, instanceId: 'pw3', prewarmPerShape: 3 });
    const none = new SandboxExecutor({ imagesDir, stateDir, ownerId: `${owner}-pw0`, instanceId: 'pw0', prewarmPerShape: 0 });
    try {
      // The first start fills the pool (the probe's own test run is one).
      for (let i = 0; i < 300 && ((await idleOf(three)) ?? 0) < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal(await idleOf(three), 3);
      const warm = await three.start(sh('true'));
      assert.equal(warm.coldStart, false);
      warm.stdout.resume();
      warm.stderr.resume();
      await warm.wait();
      // No pool at all: nothing idles, and a start waits for its own launcher.
      assert.equal(await idleOf(none), null);
      const cold = await none.start(sh('true'));
      assert.equal(cold.coldStart, true);
      cold.stdout.resume();
      cold.stderr.resume();
      await cold.wait();
    } finally {
      await Promise.all([three.destroy(), none.destroy()]);
    }
  });

  it('a native launcher that cannot be executed here: executions run on the shell chain instead', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const copy = join(stateDir, `not-executable-launch-${process.pid}`);
    writeFileSync(copy, readFileSync(DEFAULT_LAUNCH_HELPER_PATH), { mode: 0o644 });
    const fallback = new SandboxExecutor({ imagesDir, stateDir, ownerId: `${owner}-nx`, instanceId: 'nx', prewarmPerShape: 0, launchHelperPath: copy });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await run(fallback, sh('echo "from the shell chain $(id -u)"'));
        assert.equal(r.exitCode, 0, r.stderr.toString());
        assert.equal(r.stdout.toString(), 'from the shell chain 65534\n');
      }
    } finally {
      await fallback.destroy();
      rmSync(copy, { force: true });
    }
  });

  it('uses a prepared launcher (coldStart false) with a fresh cgroup carrying this run\'s limits', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    await waitFor(async () => (((await ex.probe()).details?.prewarm as { idle: number } | null)?.idle ?? 0) >= 1, { what: 'a prepared launcher' });
    const spec = sh('echo ready; sleep 5', { limits: { memoryMb: 96, pids: 17, cpus: 0.5 } as RunSpec['limits'] });
    const execution = await ex.start(spec);
    execution.stderr.resume();
    await new Promise((resolve) => execution.stdout.once('data', resolve));
    execution.stdout.resume();
    assert.equal(execution.coldStart, false);
    const v1 = `/sys/fs/cgroup/memory/kindling/${owner}/${execution.id}`;
    if (existsSync(v1)) {
      assert.equal(readFileSync(`${v1}/memory.limit_in_bytes`, 'utf8').trim(), String(96 * 1024 * 1024));
      assert.equal(readFileSync(`/sys/fs/cgroup/pids/kindling/${owner}/${execution.id}/pids.max`, 'utf8').trim(), '18');
      assert.equal(readFileSync(`/sys/fs/cgroup/cpu/kindling/${owner}/${execution.id}/cpu.cfs_quota_us`, 'utf8').trim(), '50000');
    } else {
      const v2 = `/sys/fs/cgroup/kindling/${owner}/${execution.id}`;
      assert.equal(readFileSync(`${v2}/memory.max`, 'utf8').trim(), String(96 * 1024 * 1024));
      assert.equal(readFileSync(`${v2}/pids.max`, 'utf8').trim(), '18');
    }
    execution.kill();
    const info = await execution.wait();
    await execution.disposed;
    assert.equal(info.signal, 'SIGKILL');
    assert.deepEqual(leftoversOf(execution.id), []);
    const next = await run(ex, sh('echo again'));
    assert.notEqual(next.id, execution.id);
  });

  it('survives prepared launchers dying while they wait', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    await waitFor(async () => (((await ex.probe()).details?.prewarm as { idle: number } | null)?.idle ?? 0) >= 1, { what: 'a prepared launcher' });
    // Kill every process in this owner's cgroups: nothing runs now, so these are the waiting launchers.
    const dir = existsSync(`/sys/fs/cgroup/freezer/kindling/${owner}`) ? `/sys/fs/cgroup/freezer/kindling/${owner}` : `/sys/fs/cgroup/kindling/${owner}`;
    const procsOf = (): string[] =>
      readdirSync(dir)
        .map((name) => join(dir, name, 'cgroup.procs'))
        .filter((procs) => existsSync(procs))
        .flatMap((procs) => readFileSync(procs, 'utf8').split('\n').filter(Boolean));
    const launchers = procsOf();
    assert.ok(launchers.length > 0, 'a waiting launcher to kill');
    for (const pid of launchers) process.kill(Number(pid), 'SIGKILL');
    // Dead processes leave their cgroup as they exit.
    await waitFor(() => !procsOf().some((pid) => launchers.includes(pid)), { what: 'the killed launchers to be gone' });
    const r = await run(ex, sh('echo fine'));
    assert.equal(out(r), 'fine\n');
  });

  it('execs an executable of the image without the shell, and keeps the shell where the image is not what the sandbox sees', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    // bwrap's init (pid 1) keeps bwrap's argv: the command after `--` is what bwrap exec'd.
    const direct = await run(ex, testSpec({ command: ['cat', '/proc/1/cmdline'] }, PYTHON));
    assert.equal(direct.exitCode, 0, err(direct));
    const argv = out(direct).split('\0');
    assert.deepEqual(argv.slice(argv.indexOf('--') + 1), ['cat', '/proc/1/cmdline', '']);
    // The same environment as through the shell, which exports PWD.
    const env = await run(ex, testSpec({ command: ['env'], env: { PATH: '/usr/bin:/bin' }, workdir: '/work' }, PYTHON));
    assert.deepEqual(out(env).trim().split('\n').sort(), ['PATH=/usr/bin:/bin', 'PWD=/work']);
    // A PATH entry in the sandbox's /tmp comes first: the image cannot say what is there, the shell looks.
    const shadowed = await run(ex, testSpec({ command: ['cat', '/proc/1/cmdline'], env: { PATH: '/tmp/bin:/usr/bin:/bin' } }, PYTHON));
    assert.match(out(shadowed), /\0\/bin\/sh\0-c\0exec "\$@"\0cat\0cat\0/);
    // Not in the image: the shell's 127 and its message, as before.
    const missing = await run(ex, testSpec({ command: ['no-such-command'] }, PYTHON));
    assert.equal(missing.exitCode, 127);
    assert.match(err(missing), /no-such-command: not found/);
  });

  it('binds the image root in one mount with the mount points it lacks, hides what the image has but a sandbox does not take, and falls back for others', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    // mountinfo: the mount point is field 5; the file system type and source follow the ` - ` after optional fields.
    const list = 'grep -c . /proc/self/mountinfo; awk \'$5 == "/" { for (i = 6; i < NF; i++) if ($i == "-") { print $(i + 1), $(i + 2); break } }\' /proc/self/mountinfo; ls -A /; test -e /sys && echo HAS-SYS; touch /new 2>&1';
    const whole = await run(ex, sh(list, { workdir: '/work' }));
    const [count, root, ...rest] = out(whole).trim().split('\n');
    assert.equal(root, 'overlay kindling-image', out(whole));
    // / (the image), /proc, /dev (a tmpfs, /dev/pts, /dev/shm and six device binds), /tmp, /work: nothing per entry of the image.
    assert.ok(Number(count) <= 13, out(whole));
    assert.ok(rest.includes('usr') && rest.includes('.kindling') && rest.includes('work'), out(whole));
    assert.ok(!rest.includes('recipe.json') && !rest.includes('HAS-SYS') && !rest.includes('sys'), out(whole));
    assert.match(out(whole), /touch: cannot touch '\/new': Read-only file system/);
    // A work dir the image has no directory for: bound entry by entry as before, the work dir made in bwrap's root.
    const other = await run(ex, sh(`${list}; pwd; echo data > f && cat f`, { workdir: '/app' }));
    assert.equal(other.exitCode, 0, err(other));
    const lines = out(other).trim().split('\n');
    assert.notEqual(lines[1], 'overlay kindling-image');
    assert.ok(Number(lines[0]) > Number(count) + 5 && lines.includes('app') && lines.includes('usr') && !lines.includes('recipe.json') && !lines.includes('HAS-SYS'), out(other));
    assert.deepEqual(lines.slice(-2), ['/app', 'data']);
  });

  it('says what to fix when it cannot run', async (t) => {
    if (!ready(t)) return;
    const noImages = new SandboxExecutor({ imagesDir: join(stateDir, 'no-images'), stateDir, ownerId: `${owner}-probe`, instanceId: 'p', prewarmPerShape: 0 });
    try {
      const status = await noImages.probe();
      assert.equal(status.ready, false);
      assert.match(status.reason, /no runtime image rootfs .*kindling images build/);
    } finally {
      await noImages.destroy();
    }
    const hidden = mkdtempSync(join(tmpdir(), 'kindling-sandbox-hidden-')); // 0700
    try {
      const unreachable = new SandboxExecutor({ imagesDir, stateDir: join(hidden, 'state'), ownerId: `${owner}-probe`, instanceId: 'p', prewarmPerShape: 0 });
      try {
        const s2 = await unreachable.probe();
        assert.equal(s2.ready, false);
        assert.match(s2.reason, /not searchable by the sandbox uid 65534: chmod o\+x/);
      } finally {
        await unreachable.destroy();
      }
    } finally {
      rmSync(hidden, { recursive: true, force: true });
    }
  });

  it('is still healthy after all of the above', async (t) => {
    const ex = ready(t);
    if (!ex) return;
    const status = await ex.probe();
    assert.equal(status.ready, true, status.reason);
    const result = await run(ex, py('print(6 * 7)'));
    assert.equal(out(result), '42\n');
    assert.deepEqual(leftoversOf(result.id), []);
  });
});
