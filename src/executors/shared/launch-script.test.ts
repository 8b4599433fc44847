import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildLaunchScript, shellQuote } from './launch-script.js';

test('shellQuote survives quotes, dollars, backticks and newlines when run by sh', () => {
  const nasty = `it's "$HOME" \`id\` $(id)\nline2 \\ end`;
  const out = execFileSync('sh', ['-c', `printf %s ${shellQuote(nasty)}`]).toString();
  assert.equal(out, nasty);
});

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

test('rejects invalid env names and empty commands', () => {
  const base = { workdir: '/', stdinPath: null, stdoutPath: '/o', stderrPath: '/e' };
  assert.throws(() => buildLaunchScript({ ...base, command: ['x'], env: { 'BAD-NAME': '1' } }), /invalid environment variable name/);
  assert.throws(() => buildLaunchScript({ ...base, command: [], env: {} }), /command must not be empty/);
});
