/**
 * The launch service with the real native helper (native/kindling-launch --serve), as root: launchers are forked by
 * the spawner, not by this process; their fds 0-5 and 7 are the streams the service hands out; exit codes, signals
 * and kills go through the spawner; the launched process cannot write back through its stdin; a spawner that dies
 * takes its launchers with it and is replaced at the next spawn; a helper that cannot run fails spawns at once with a
 * code the caller falls back on; a connection that names no launcher is dropped.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { waitFor } from '../../../test/helpers/wait.js';
import { noopLogger } from '../shared/logger.js';
import { LAUNCH_SERVICE_UNAVAILABLE, LaunchService, type LauncherProcess } from './launch-service.js';
import { DEFAULT_LAUNCH_HELPER_PATH } from './launcher.js';

const UID = 65534;
const skip =
  process.getuid?.() !== 0
    ? 'needs root (the helper drops to the sandbox uid)'
    : !fs.existsSync(DEFAULT_LAUNCH_HELPER_PATH)
      ? `no ${DEFAULT_LAUNCH_HELPER_PATH}: run scripts/build-native.sh`
      : false;

function record(argv: string[]): string {
  return ['64', '1', String(argv.length), ...argv].map((field) => `${field}\0`).join('');
}

async function text(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Hands a launcher its command the way the executor does (no seccomp program, no bwrap arguments). */
function run(launcher: LauncherProcess, argv: string[], stdinText: string): void {
  const pipes = launcher.stdio as (Writable | null)[];
  for (const fd of [0, 3, 5, 7]) pipes[fd]!.on('error', () => {});
  pipes[3]!.end();
  pipes[7]!.end();
  pipes[0]!.end(stdinText);
  pipes[5]!.end(record(argv));
}

describe('the launch service (kindling-launch --serve)', { skip }, () => {
  let dir: string;
  let service: LaunchService;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kindling-launch-service-'));
    service = new LaunchService({ helperPath: DEFAULT_LAUNCH_HELPER_PATH, socketPath: join(dir, 'launch.sock'), prepareDir: async () => {}, log: noopLogger });
  });
  after(async () => {
    await service.close();
    assert.equal(fs.existsSync(join(dir, 'launch.sock')), false, 'the socket file is removed at close');
    await rm(dir, { recursive: true, force: true });
  });

  test('the spawner forks the launcher; its stdio are the streams handed out; the exit code comes back', async () => {
    const procs = join(dir, 'a.procs');
    fs.writeFileSync(procs, '');
    const launcher = await service.spawn([String(UID), String(UID), '0', '-', procs]);
    const status = text(launcher.stdio[4] as Readable);
    const stdout = text(launcher.stdio[1] as Readable);
    const stderr = text(launcher.stdio[2] as Readable);
    run(launcher, ['/bin/sh', '-c', 'echo "out $(cat) ppid $PPID uid $(id -u)"; echo err >&2; exit 7'], 'in');
    assert.deepEqual(await launcher.exited, { code: 7, sig: null });
    assert.deepEqual(launcher.exitStatus, { code: 7, sig: null });
    await launcher.closed;
    assert.equal(await status, 'R\n');
    assert.equal(await stderr, 'err\n');
    // The launcher joined the procs file with its own pid, and its parent was the spawner, not this process.
    assert.equal(fs.readFileSync(procs, 'utf8'), `${launcher.pid}\n`);
    assert.equal(await stdout, `out in ppid ${service.spawnerPid} uid ${UID}\n`);
    assert.notEqual(service.spawnerPid, process.pid);
  });

  test('kill goes through the spawner and the signal is reported', async () => {
    const launcher = await service.spawn([String(UID), String(UID), '0', '-']);
    const stdout = text(launcher.stdio[1] as Readable);
    run(launcher, ['/bin/sh', '-c', 'echo started; exec sleep 60'], '');
    await waitFor(() => fs.existsSync(`/proc/${launcher.pid}`) && fs.readFileSync(`/proc/${launcher.pid}/cmdline`, 'utf8').startsWith('sleep'), {
      what: 'the command to run',
    });
    launcher.kill('SIGTERM');
    assert.deepEqual(await launcher.exited, { code: null, sig: 'SIGTERM' });
    await launcher.closed;
    assert.equal(await stdout, 'started\n');
  });

  test('a setup step that fails ends the launcher with 125, reported before it would be ready', async () => {
    const launcher = await service.spawn([String(UID), String(UID), '0', '-', join(dir, 'missing', 'cgroup.procs')]);
    const status = text(launcher.stdio[4] as Readable);
    assert.deepEqual(await launcher.exited, { code: 125, sig: null });
    assert.match(await status, /missing\/cgroup\.procs: No such file or directory/);
  });

  test('what the launched process writes into its stdin goes nowhere: the write fails (EPIPE)', async () => {
    const launcher = await service.spawn([String(UID), String(UID), '0', '-']);
    const stdout = text(launcher.stdio[1] as Readable);
    run(launcher, ['/bin/sh', '-c', 'trap "" PIPE; echo into-stdin >&0 2>/dev/null; echo "write status $?"'], '');
    assert.deepEqual(await launcher.exited, { code: 0, sig: null });
    assert.match(await stdout, /^write status [1-9]/);
  });

  test('a helper that cannot run: spawn fails at once with LAUNCH_SERVICE_UNAVAILABLE (the caller spawns launchers itself)', async () => {
    const notExecutable = join(dir, 'not-executable');
    fs.writeFileSync(notExecutable, '#!/bin/sh\n', { mode: 0o644 });
    const broken = new LaunchService({ helperPath: notExecutable, socketPath: join(dir, 'broken.sock'), prepareDir: async () => {}, log: noopLogger });
    try {
      const started = performance.now();
      await assert.rejects(broken.spawn([String(UID), String(UID), '0', '-']), (err: Error & { code?: string }) => err.code === LAUNCH_SERVICE_UNAVAILABLE);
      await assert.rejects(broken.spawn([String(UID), String(UID), '0', '-']), (err: Error & { code?: string }) => err.code === LAUNCH_SERVICE_UNAVAILABLE);
      assert.ok(performance.now() - started < 5_000, 'not after the connect timeout');
    } finally {
      await broken.close();
    }
  });

  test('a connection that names no launcher is dropped', async () => {
    const socket = connect(join(dir, 'launch.sock'));
    socket.on('error', () => {});
    socket.end('0123456789abcdef1');
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  });

  test('a spawner that dies takes its launchers with it, and the next spawn starts another', async () => {
    const launcher = await service.spawn([String(UID), String(UID), '0', '-']);
    const first = service.spawnerPid!;
    process.kill(first, 'SIGKILL');
    assert.deepEqual(await launcher.exited, { code: null, sig: 'SIGKILL' });
    await waitFor(() => !fs.existsSync(`/proc/${launcher.pid}`), { what: 'the orphaned launcher to be gone' });
    const next = await service.spawn([String(UID), String(UID), '0', '-']);
    assert.notEqual(service.spawnerPid, first);
    const stdout = text(next.stdio[1] as Readable);
    run(next, ['/bin/echo', 'again'], '');
    assert.deepEqual(await next.exited, { code: 0, sig: null });
    assert.equal(await stdout, 'again\n');
  });
});
