import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildLaunchScript } from './launch-script.js';

test('the launch script sets stdio, workdir and exactly the given env, then execs argv verbatim', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-launch-'));
  try {
    const out = join(dir, 'out');
    const err = join(dir, 'err');
    const script = buildLaunchScript({ command: ['printf', '%s|', 'a b', "c'd"], env: { ONLY: 'this $one' }, workdir: '/tmp', stdinPath: null, stdoutPath: out, stderrPath: err });
    assert.ok(script.startsWith(`exec </dev/null >'${out}' 2>'${err}'\n`));
    execFileSync('sh', ['-c', script], { env: { PATH: process.env.PATH, SECRET: 'x' } });
    assert.equal(readFileSync(out, 'utf8'), "a b|c'd|");
    const envScript = buildLaunchScript({ command: ['env'], env: { ONLY: 'this $one' }, workdir: '/', stdinPath: null, stdoutPath: out, stderrPath: err });
    execFileSync('sh', ['-c', envScript], { env: { PATH: process.env.PATH, SECRET: 'x' } });
    assert.equal(readFileSync(out, 'utf8'), 'ONLY=this $one\n');
    const failing = buildLaunchScript({ command: ['true'], env: {}, workdir: '/proc/no-such-dir/x', stdinPath: null, stdoutPath: out, stderrPath: err });
    assert.throws(() => execFileSync('sh', ['-c', failing]), (error: { status?: number }) => error.status === 126);
    assert.match(readFileSync(err, 'utf8'), /can't cd|No such file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('env values never appear in an argv (only the shell itself holds them before the exec)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-launch-'));
  try {
    // Every external command the script runs is found through this PATH first and logs its argv.
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const log = join(dir, 'argv.log');
    for (const tool of ['env', 'sed', 'printf']) {
      const real = ['/usr/bin', '/bin'].map((d) => join(d, tool)).find((f) => existsSync(f));
      assert.ok(real, `no /usr/bin/${tool}`);
      writeFileSync(join(bin, tool), `#!/bin/sh\nprintf '%s\\n' "$0 $*" >> '${log}'\nexec ${real} "$@"\n`, { mode: 0o755 });
    }
    const secret = 'argv-secret-value';
    for (const usagePath of [undefined, join(dir, 'usage')]) {
      const script = buildLaunchScript({ command: [join(bin, 'printf'), '%s', 'ok'], env: { PATH: `${bin}:${process.env.PATH}`, TOKEN: secret }, workdir: '/tmp', stdinPath: null, stdoutPath: join(dir, 'out'), stderrPath: join(dir, 'err'), ...(usagePath === undefined ? {} : { usagePath }) });
      execFileSync('sh', ['-c', script], { env: { PATH: `${bin}:${process.env.PATH}` } });
      assert.equal(readFileSync(join(dir, 'out'), 'utf8'), 'ok');
    }
    const argvs = readFileSync(log, 'utf8');
    assert.match(argvs, /\/env/, 'the wrapper saw no command at all');
    assert.ok(!argvs.includes(secret), `an env value was in an argv:\n${argvs}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('rejects invalid env names and empty commands', () => {
  const base = { workdir: '/', stdinPath: null, stdoutPath: '/o', stderrPath: '/e' };
  assert.throws(() => buildLaunchScript({ ...base, command: ['x'], env: { 'BAD-NAME': '1' } }), /invalid environment variable name/);
  assert.throws(() => buildLaunchScript({ ...base, command: [], env: {} }), /command must not be empty/);
});
