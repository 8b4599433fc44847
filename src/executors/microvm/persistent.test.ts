/**
 * Persistent sandboxes on QEMU (TCG here), what the conformance suite does not cover: files on the data disk outlive
 * the VM (also a VM killed with SIGKILL), snapshots are immutable qcow2 files that forks share as a backing file,
 * hibernation saves every process with its memory and a restore continues them. Real boots (5 s+ each under TCG, more
 * under load): few per case. Uses the assets in $KINDLING_MICROVM_ASSETS_DIR (default /var/lib/kindling/microvm),
 * which must be built from this tree (the agent must know SANDBOX and FREEZE).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Duplex } from 'node:stream';
import { MAX_CHUNK_BYTES } from '../../../agent/vm/protocol.js';
import { waitFor } from '../../../test/helpers/wait.js';
import { isKindlingError } from '../../core/errors.js';
import { newExecutionId } from '../../core/ids.js';
import type { RunSpec } from '../../core/types.js';
import { testSpec } from '../conformance.js';
import type { PersistentSandbox } from '../executor.js';
import { skipOrFail } from '../test-support.js';
import { DEFAULT_MICROVM_ASSETS_DIR } from './assets.js';
import { MicroVmExecutor } from './index.js';

const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR ?? DEFAULT_MICROVM_ASSETS_DIR;
const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
let stateDir = '';
let executor: MicroVmExecutor | null = null;
let missing = '';

before(async () => {
  if (spawnSync('qemu-system-x86_64', ['--version']).status !== 0) {
    missing = 'qemu-system-x86_64 is not installed (Debian: qemu-system-x86)';
    return;
  }
  stateDir = await mkdtemp(path.join(tmpdir(), 'kindling-microvm-sandboxes-'));
  executor = new MicroVmExecutor({ driver: 'qemu', imagesDir, assetsDir, stateDir, ownerId: `microvm-sandbox-test-${process.pid}`, instanceId: 'test', prewarmPerShape: 0 });
  const status = await executor.probe();
  if (!status.ready) missing = `microvm executor not ready: ${status.reason}`;
});

after(async () => {
  await executor?.destroy();
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

const spec = (id: string): RunSpec => ({ ...testSpec({ command: [] }), id, limits: { timeoutMs: 600_000, memoryMb: 256, cpus: 1, pids: 128, outputBytes: 1 << 20, diskMb: 64, openFiles: 1024 } });

async function run(sandbox: PersistentSandbox, script: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const command = await sandbox.exec({ command: ['sh', '-c', script], env: {}, workdir: '/work', stdin: false });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  command.stdout.on('data', (chunk: Buffer) => out.push(chunk));
  command.stderr.on('data', (chunk: Buffer) => err.push(chunk));
  const { exitCode } = await command.wait();
  return { exitCode, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

/** The pids of the qemu processes of this test's VMs (vm.json in each VM dir). */
function qemuPids(): number[] {
  const dir = path.join(stateDir, 'microvm', 'vms');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((name) => path.join(dir, name, 'vm.json'))
    .filter((file) => existsSync(file))
    .map((file) => (JSON.parse(readFileSync(file, 'utf8')) as { pid: number }).pid)
    .filter((pid) => existsSync(`/proc/${pid}`));
}

const storageDir = (): string => path.join(stateDir, 'microvm', 'sandboxes', `microvm-sandbox-test-${process.pid}`);

describe('microvm (qemu) persistent sandboxes: disks, snapshots, hibernation', () => {
  it('the firecracker driver has no persistent sandboxes and says so (SANDBOXES_UNSUPPORTED), with no storage', async () => {
    const firecracker = new MicroVmExecutor({ driver: 'firecracker', imagesDir, assetsDir, stateDir: tmpdir(), ownerId: `microvm-fc-test-${process.pid}`, instanceId: 'test' });
    try {
      assert.equal(firecracker.sandboxStorage, undefined);
      await assert.rejects(firecracker.createPersistentSandbox(spec('sbx-fc')), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOXES_UNSUPPORTED' && /qemu/.test(error.message));
    } finally {
      await firecracker.destroy();
    }
  });

  it('files on the data disk outlive a killed VM; a snapshot is an immutable qcow2 (plus the memory) that a fork uses as its backing file', { timeout: 900_000 }, async (t) => {
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const storage = executor!.sandboxStorage!;
    const id = `sbx-${newExecutionId().slice(-12)}`;
    const forkId = `${id}-fork`;
    const snapshotId = `snap-${id}`;
    let first: PersistentSandbox | null = await executor!.createPersistentSandbox(spec(id), { storage: { fromSnapshot: null } });
    let fork: PersistentSandbox | null = null;
    try {
      assert.equal((await run(first, 'echo kept > /work/a.txt && echo scratch > /tmp/t && sync')).exitCode, 0);
      // The VM has no RTC: the host set its clock after the boot (else it would say 1970).
      const skewS = Number((await run(first, 'date +%s')).stdout.trim()) - Date.now() / 1000;
      assert.ok(Math.abs(skewS) < 3, `the guest clock is ${skewS.toFixed(1)} s off the host's after a boot`);
      // The VM dies (SIGKILL, no shutdown): what was synced is on the disk.
      const [pid] = qemuPids();
      assert.ok(pid !== undefined, 'the sandbox has a qemu process');
      process.kill(pid, 'SIGKILL');
      await first.disposed;
      assert.equal(first.alive, false);
      assert.deepEqual(qemuPids(), []);

      first = await executor!.createPersistentSandbox(spec(id), { storage: { fromSnapshot: null } });
      const seen = await run(first, 'cat /work/a.txt /tmp/t; stat -c %U /work/a.txt');
      assert.equal(seen.stdout, 'kept\nscratch\nnobody\n', seen.stderr);
      // Written after the restart, never synced by the command: destroy() writes it out before the VM goes.
      assert.equal((await run(first, 'echo two > /work/b.txt')).exitCode, 0);

      // A snapshot of a paused sandbox: the disk and the memory, and the sandbox stays paused.
      await first.pause();
      const pausedAt = Date.now();
      const snap = await first.snapshot!(snapshotId);
      const status = await (first as unknown as { vm: { qmp: { execute<T>(command: string): Promise<T> } } }).vm.qmp.execute<{ status: string }>('query-status');
      assert.equal(status.status, 'paused', 'a paused sandbox is paused again after its snapshot');
      // Paused for 5 s in all (the scenario, not a wait for state): the guest's clock stood still meanwhile.
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, pausedAt + 5_000 - Date.now())));
      await first.resume();
      const resumedSkewS = Number((await run(first, 'date +%s')).stdout.trim()) - Date.now() / 1000;
      assert.ok(Math.abs(resumedSkewS) < 3, `the guest clock is ${resumedSkewS.toFixed(1)} s off the host's after a resume`);
      assert.equal(snap.memory, true);
      const snapshotFile = path.join(storageDir(), 'snapshots', `${snapshotId}.qcow2`);
      const memoryFile = path.join(storageDir(), 'snapshots', `${snapshotId}.vmstate`);
      assert.equal(statSync(snapshotFile).size + statSync(memoryFile).size, snap.bytes);
      assert.equal(statSync(snapshotFile).mode & 0o777, 0o444, 'a snapshot is never written again');
      assert.equal(statSync(memoryFile).mode & 0o777, 0o444, "a snapshot's memory is never written again");
      assert.equal((await run(first, 'echo after > /work/c.txt')).stdout, '', 'the sandbox runs on after its snapshot');
      // A snapshot that fails (here: an id no file may have) is the caller's error: the VM runs on, nothing is kept,
      // and no promise is left rejecting unhandled (that would end this test process).
      await assert.rejects(first.snapshot!('no/such id'), (error: unknown) => isKindlingError(error));
      assert.equal((await run(first, 'echo still running')).stdout, 'still running\n');
      // Its forks are that VM going on: a spec asking for another memory size is refused, and nothing is made for it.
      const bigger = spec(`${id}-big`);
      await assert.rejects(
        executor!.createPersistentSandbox({ ...bigger, limits: { ...bigger.limits, memoryMb: 512 } }, { storage: { fromSnapshot: snapshotId } }),
        (error: unknown) => isKindlingError(error) && error.code === 'CONFLICTING_FIELDS' && /memoryMb/.test(error.message),
      );
      assert.equal(existsSync(path.join(storageDir(), 'disks', `${id}-big.qcow2`)), false, 'the refused fork made no disk');

      fork = await executor!.createPersistentSandbox(spec(forkId), { storage: { fromSnapshot: snapshotId } });
      assert.equal((await run(fork, 'cat /work/a.txt /work/b.txt; ls /work')).stdout, 'kept\ntwo\na.txt\nb.txt\n');
      assert.equal((await run(fork, 'echo mine > /work/f.txt')).exitCode, 0);
      assert.notEqual((await run(first, 'cat /work/f.txt')).exitCode, 0, "the fork's writes are its own");
      // Copy-on-write: the fork's disk is an overlay whose backing file is the snapshot, not a copy of it.
      const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', path.join(storageDir(), 'disks', `${forkId}.qcow2`)], { encoding: 'utf8' })) as { 'backing-filename'?: string };
      assert.equal(info['backing-filename'], snapshotFile);

      await fork.destroy();
      await first.destroy();
      assert.deepEqual(qemuPids(), [], 'no qemu process is left');
      // A snapshot that is gone cannot seed a new disk; its removal takes the disk, the memory and their record.
      await storage.removeSnapshot(snapshotId);
      assert.deepEqual(readdirSync(path.join(storageDir(), 'snapshots')), []);
      await assert.rejects(executor!.createPersistentSandbox(spec(`${id}-x`), { storage: { fromSnapshot: snapshotId } }), (error: unknown) => isKindlingError(error) && error.code === 'SNAPSHOT_NOT_FOUND');
      // reap() removes the disks of sandboxes not kept; removeDisk one kept.
      assert.equal(await storage.reap(new Set([id]), new Set()), 1);
      await storage.removeDisk(id);
      assert.deepEqual(readdirSync(path.join(storageDir(), 'disks')), []);
    } finally {
      await fork?.destroy();
      await first?.destroy();
    }
  });

  it('hibernate() saves every process with its memory and ends the VM; a restore continues them, once', { timeout: 900_000 }, async (t) => {
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const storage = executor!.sandboxStorage!;
    const id = `hib-${newExecutionId().slice(-12)}`;
    let sandbox: PersistentSandbox | null = await executor!.createPersistentSandbox(spec(id), { storage: { fromSnapshot: null } });
    try {
      assert.equal(sandbox.capabilities.hibernate, true);
      // A shell loop whose counter lives only in its memory (a variable), written out on every step: to a new file
      // renamed over the old one, so a read never meets the moment `>` has emptied it (read as 0: a flake in CI).
      const started = await run(sandbox, 'i=0; (while :; do i=$((i+1)); echo $i > /work/counter.new && mv /work/counter.new /work/counter; sleep 0.1; done) >/dev/null 2>&1 & echo $!');
      const loopPid = started.stdout.trim();
      assert.match(loopPid, /^\d+$/);
      const counter = async (): Promise<number> => Number((await run(sandbox!, 'cat /work/counter')).stdout.trim());
      while ((await counter()) < 3);
      const beforeHibernation = await counter();
      const saved = await sandbox.hibernate!();
      assert.ok(saved.bytes > 1 << 20, `the memory image has ${saved.bytes} bytes`);
      assert.equal(sandbox.alive, false);
      await sandbox.disposed;
      assert.deepEqual(qemuPids(), [], 'the VM (and its RAM) is gone');

      const startedAt = performance.now();
      sandbox = await executor!.createPersistentSandbox(spec(id), { storage: { fromSnapshot: null }, restore: 'hibernated' });
      const restoreMs = performance.now() - startedAt;
      assert.equal((await run(sandbox, `kill -0 ${loopPid} && echo alive`)).stdout, 'alive\n', 'the loop started before hibernation runs on');
      const atRestore = await counter();
      assert.ok(atRestore >= beforeHibernation, `the counter went on from its value in memory (${beforeHibernation} -> ${atRestore}), it did not start over`);
      while ((await counter()) <= atRestore);
      assert.equal((await run(sandbox, 'echo new command')).stdout, 'new command\n');
      // The guest's clock is the host's again, not the one it had when it was saved.
      const skewS = Number((await run(sandbox, 'date +%s')).stdout.trim()) - Date.now() / 1000;
      assert.ok(Math.abs(skewS) < 3, `the guest clock is ${skewS.toFixed(1)} s off the host's after the restore`);
      t.diagnostic(`memory image ${Math.round(saved.bytes / (1 << 20))} MiB; restore to agent-ready ${Math.round(restoreMs)} ms`);

      // The image was consumed: a second restore has nothing to restore.
      await sandbox.destroy();
      await assert.rejects(executor!.createPersistentSandbox(spec(id), { storage: { fromSnapshot: null }, restore: 'hibernated' }), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_STATE_LOST');
      assert.deepEqual(qemuPids(), []);
    } finally {
      await sandbox?.destroy();
      await storage.removeDisk(id);
    }
  });

  it('ports: a connection whose reader stops reading holds at most the flow-control window on the host while the server in the VM is held back; every byte arrives once read; an idle one ends', { timeout: 900_000 }, async (t) => {
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const total = 16 << 20;
    // Sends `total` bytes to each connection, writing how far it got to /tmp/sent after every 64 KiB.
    const server = [
      'import socket',
      's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8200)); s.listen(4)',
      'while True:',
      '    c, _ = s.accept(); sent = 0',
      `    while sent < ${total}:`,
      '        c.sendall(b"x" * 65536); sent += 65536',
      '        open("/tmp/sent.new", "w").write(str(sent)); __import__("os").rename("/tmp/sent.new", "/tmp/sent")',
      '    c.close()',
    ].join('\n');
    const sandbox = (await executor!.createPersistentSandbox({ ...spec(`port-${newExecutionId().slice(-12)}`), image: 'kindling/python' })) as PersistentSandbox & { portStats(): { bufferedBytes: number; peakBufferedBytes: number; windowBytes: number; connections: number } };
    try {
      assert.equal((await run(sandbox, `python3 -c '${server}' >/tmp/server.log 2>&1 &`)).exitCode, 0);
      const options = { idleTimeoutMs: 120_000, connectTimeoutMs: 10_000 };
      let stream: Duplex | null = null;
      await waitFor(
        async () => {
          stream = await sandbox.connectPort!(8200, options).catch((error: unknown) => {
            if (isKindlingError(error) && error.code === 'SANDBOX_PORT_UNREACHABLE') return null;
            throw error;
          });
          return stream !== null;
        },
        { timeoutMs: 300_000, intervalMs: 200, what: 'the server in the VM to listen' },
      );
      const connection = stream! as Duplex;
      const window = sandbox.portStats().windowBytes;
      // Nobody reads: the host fills up to its window, then the guest is held back.
      await waitFor(() => sandbox.portStats().bufferedBytes >= window / 2, { timeoutMs: 300_000, what: 'output to reach the host' });
      const sent = async (): Promise<number> => Number((await run(sandbox, 'cat /tmp/sent')).stdout.trim());
      let last = -1;
      // The server stalls (its socket buffers full, the relay paused): two reads of its progress agree.
      await waitFor(
        async () => {
          const now = await sent();
          const stalled = now === last;
          last = now;
          return stalled;
        },
        { timeoutMs: 300_000, intervalMs: 1000, what: 'the server in the VM to be held back' },
      );
      const stats = sandbox.portStats();
      t.diagnostic(`held back: the server sent ${last} of ${total} bytes; the host holds ${stats.bufferedBytes} (peak ${stats.peakBufferedBytes}, window ${window})`);
      assert.ok(last < total, `the server is held back (${last} of ${total} bytes sent)`);
      assert.ok(stats.peakBufferedBytes <= window + MAX_CHUNK_BYTES, `the host held at most window + one chunk (peak ${stats.peakBufferedBytes})`);
      // Reading again: every byte arrives, in order, and the bound held all the way.
      let got = 0;
      for await (const piece of connection) got += (piece as Buffer).length;
      assert.equal(got, total);
      assert.ok(sandbox.portStats().peakBufferedBytes <= window + MAX_CHUNK_BYTES, `peak ${sandbox.portStats().peakBufferedBytes}`);
      await waitFor(() => sandbox.portStats().connections === 0, { timeoutMs: 60_000, what: 'the relay to end with its connection' });

      // Idle: a connection on which nothing moves ends after idleTimeoutMs (the helper exits, the stream closes).
      assert.equal((await run(sandbox, `python3 -c 'import socket,time\ns=socket.socket(); s.bind(("127.0.0.1", 8201)); s.listen(1); c=s.accept(); time.sleep(3600)' >/dev/null 2>&1 &`)).exitCode, 0);
      let idle: Duplex | null = null;
      await waitFor(
        async () => (idle = await sandbox.connectPort!(8201, { idleTimeoutMs: 2000, connectTimeoutMs: 10_000 }).catch(() => null)) !== null,
        { timeoutMs: 300_000, intervalMs: 200, what: 'the idle server to listen' },
      );
      const startedAt = performance.now();
      await new Promise<void>((resolve) => (idle as Duplex).once('close', () => resolve()).resume());
      t.diagnostic(`the idle connection closed after ${Math.round(performance.now() - startedAt)} ms (idleTimeoutMs 2000)`);
      await waitFor(() => sandbox.portStats().connections === 0, { timeoutMs: 60_000, what: 'the idle relay to end' });
    } finally {
      await sandbox.destroy();
    }
  });
});
