import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { killUntilGone, processAlive, processExited, shellQuote, signalName, signalNumber, signalOfExitCode } from './process.js';

test('signalName maps numbers to names and unknown numbers to null', () => {
  assert.equal(signalName(9), 'SIGKILL');
  assert.equal(signalName(15), 'SIGTERM');
  assert.equal(signalName(0), null);
  assert.equal(signalName(1000), null);
});

test('signalOfExitCode reads 128 + n statuses only', () => {
  assert.equal(signalOfExitCode(137), 'SIGKILL');
  assert.equal(signalOfExitCode(143), 'SIGTERM');
  assert.equal(signalOfExitCode(128), null);
  assert.equal(signalOfExitCode(127), null);
  assert.equal(signalOfExitCode(0), null);
  assert.equal(signalOfExitCode(128 + 65), null);
  assert.equal(signalOfExitCode(255), null);
});

test('signalNumber maps names to numbers, unknown names to the fallback', () => {
  assert.equal(signalNumber('SIGKILL'), 9);
  assert.equal(signalNumber('SIGTERM'), 15);
  assert.equal(signalNumber('SIGNOPE'), 9);
  assert.equal(signalNumber('SIGNOPE', 1), 1);
});

test('processAlive: this process yes, pid 1 yes (EPERM counts as alive), a reaped child and invalid pids no', async () => {
  assert.equal(processAlive(process.pid), true);
  assert.equal(processAlive(1), true);
  assert.equal(processAlive(0), false);
  assert.equal(processAlive(-1), false);
  assert.equal(processAlive(1.5), false);
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(processAlive(child.pid!), false);
});

test('shellQuote survives quotes, dollars, backticks, newlines and the empty string when run by sh', () => {
  for (const value of ['', "it's", '$HOME `id` $(id)', 'a\nb', "'", "''\\'", ' spaced  out ', `it's "$HOME" \`id\` $(id)\nline2 \\ end`]) {
    const out = execFileSync('sh', ['-c', `printf %s ${shellQuote(value)}`]).toString();
    assert.equal(out, value);
  }
});

test('killUntilGone kills what the tree names until it names nothing, also what appears between rounds', async () => {
  const first = spawn('sleep', ['100'], { stdio: 'ignore' });
  const late = spawn('sleep', ['100'], { stdio: 'ignore' });
  const pids = [first.pid!, late.pid!];
  const exited = pids.map((pid, i) => new Promise<void>((resolve) => [first, late][i]!.once('exit', () => resolve())));
  let rounds = 0;
  // The second process only shows up in the second round (as a child forked while its tree was being killed).
  await killUntilGone(() => {
    rounds++;
    return pids.slice(0, rounds).filter((pid) => [first, late].some((child) => child.pid === pid && child.exitCode === null && child.signalCode === null));
  });
  await Promise.all(exited);
  assert.equal(first.signalCode, 'SIGKILL');
  assert.equal(late.signalCode, 'SIGKILL');
  assert.ok(rounds >= 2, `rounds ${rounds}`);
});

test('processExited sees a killed child that node has not reaped yet (a zombie), and a reaped one', async () => {
  const child = spawn('sleep', ['100'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  assert.equal(processExited(child.pid), false);
  child.kill('SIGKILL');
  // Synchronous loop: node cannot handle the exit meanwhile, so the child is a zombie when it is seen as exited.
  const until = Date.now() + 5000;
  while (!processExited(child.pid) && Date.now() < until);
  assert.equal(processExited(child.pid), true);
  assert.equal(child.exitCode, null, 'not reaped yet: only /proc says it exited');
  await exited;
  assert.equal(processExited(child.pid), true);
  assert.equal(processExited(undefined), true);
});
