/**
 * native/kindling-launch on its own (the sandbox executor runs it as every sandbox's launcher; its whole path is
 * covered by the executor's suites): the process it execs has dropped to the sandbox uid and gid with no groups, no
 * capability in any set, no-new-privs and the limits asked; its pid went into every procs file before it said ready;
 * a procs file it cannot write stops it before anything runs. Needs root and the built helper.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { launcherSetupError } from './execution.js';
import { DEFAULT_LAUNCH_HELPER_PATH } from './launcher.js';

const UID = 65534;
const skip = process.getuid?.() !== 0 ? 'needs root (the helper drops to the sandbox uid)' : !fs.existsSync(DEFAULT_LAUNCH_HELPER_PATH) ? `no ${DEFAULT_LAUNCH_HELPER_PATH}: run scripts/build-native.sh` : false;

function record(openFiles: number, stdin: boolean, argv: string[]): string {
  return [String(openFiles), stdin ? '1' : '0', String(argv.length), ...argv].map((field) => `${field}\0`).join('');
}

async function text(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Runs the helper as the executor does (fds 0-5 and 7 pipes, 6 unset). */
function launch(args: string[], command: string, stdinText: string) {
  // fd 6 is a pipe too, where the executor leaves nothing: the helper must close it either way.
  const child = spawn(DEFAULT_LAUNCH_HELPER_PATH, args, { stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'], env: {}, cwd: '/' });
  const pipes = child.stdio as unknown as (Writable & Readable)[];
  const status = text(pipes[4]!);
  const stdout = text(child.stdout!);
  const stderr = text(child.stderr!);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  for (const fd of [0, 3, 5, 6, 7]) pipes[fd]!.on('error', () => {});
  pipes[6]!.end();
  child.stdin!.end(stdinText);
  pipes[3]!.end();
  pipes[7]!.end();
  pipes[5]!.end(command);
  return { pid: child.pid!, status, stdout, stderr, exited };
}

describe('the native launcher (kindling-launch)', { skip }, () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kindling-launch-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('joins every procs file, says ready, then runs the command unprivileged with the limits asked', async () => {
    const procs = [join(dir, 'a.procs'), join(dir, 'b.procs')];
    for (const file of procs) fs.writeFileSync(file, '');
    const script = [
      'grep -E "^(Uid|Gid|Groups|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):" /proc/self/status',
      'echo "nofile $(ulimit -n) $(ulimit -Hn) core $(ulimit -c) $(ulimit -Hc)"',
      'for fd in 5 6; do [ -e /proc/self/fd/$fd ] && echo "fd $fd open"; done',
      'echo "env $(wc -c < /proc/$$/environ)"',
      'echo "stdin $(cat)"',
    ].join('\n');
    const run = launch([String(UID), String(UID), '0', '-', ...procs], record(77, true, ['/bin/sh', '-c', script]), 'from the caller');
    assert.equal(await run.exited, 0, await run.stderr);
    assert.equal(await run.status, 'R\n');
    for (const file of procs) assert.equal(fs.readFileSync(file, 'utf8'), `${run.pid}\n`);
    const out = await run.stdout;
    assert.match(out, new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm'));
    assert.match(out, new RegExp(`^Gid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm'));
    assert.match(out, /^Groups:\s*$/m);
    assert.match(out, /^NoNewPrivs:\s+1$/m);
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.match(out, new RegExp(`^${set}:\\s+0+$`, 'm'), set);
    assert.match(out, /^nofile 77 77 core 0 0$/m);
    assert.doesNotMatch(out, /^fd [56] open$/m);
    assert.match(out, /^env 0$/m);
    assert.match(out, /^stdin from the caller$/m);
  });

  test('STDIN 0 gives the command /dev/null, whatever the caller writes', async () => {
    const run = launch([String(UID), String(UID), '0', '-'], record(64, false, ['/bin/sh', '-c', 'echo "[$(cat)]"']), 'not for the command');
    assert.equal(await run.exited, 0, await run.stderr);
    assert.equal(await run.stdout, '[]\n');
  });

  test('a procs file it cannot write: exit 125 before ready, nothing runs, the reason on stderr and the status fd', async () => {
    const marker = join(dir, 'ran');
    const run = launch([String(UID), String(UID), '0', '-', join(dir, 'missing', 'cgroup.procs')], record(64, false, ['/usr/bin/touch', marker]), '');
    assert.equal(await run.exited, 125);
    const status = await run.status;
    assert.doesNotMatch(status, /^R$/m);
    assert.match(launcherSetupError(status) ?? '', /missing\/cgroup\.procs: No such file or directory/);
    assert.match(await run.stderr, /missing\/cgroup\.procs/);
    assert.equal(fs.existsSync(marker), false);
  });

  test('refuses uid 0 and a command that cannot be exec\'d ends 127, the reason on the status fd', async () => {
    const root = launch(['0', String(UID), '0', '-'], record(64, false, ['/bin/true']), '');
    assert.equal(await root.exited, 64);
    const missing = launch([String(UID), String(UID), '0', '-'], record(64, false, ['/no/such/program']), '');
    assert.equal(await missing.exited, 127);
    assert.match(await missing.stderr, /\/no\/such\/program/);
    assert.equal(launcherSetupError(await missing.status), '/no/such/program: No such file or directory');
  });

  test('a network namespace it cannot join: exit 125 after ready, the reason on the status fd', async () => {
    const run = launch([String(UID), String(UID), '0', join(dir, 'no-such-netns')], record(64, false, ['/bin/true']), '');
    assert.equal(await run.exited, 125);
    const status = await run.status;
    assert.match(status, /^R$/m);
    assert.match(launcherSetupError(status) ?? '', /no-such-netns: No such file or directory/);
  });
});
