import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { removeFlatDir } from './run-dirs.js';

const root = mkdtempSync(join(tmpdir(), 'kindling-command-dir-'));
after(() => rmSync(root, { recursive: true, force: true }));

test('a finished command\'s dir (three FIFOs and its run file, or fewer) goes before the promise settles', async () => {
  const full = join(root, 'c1');
  mkdirSync(full);
  execFileSync('mkfifo', [join(full, 'in'), join(full, 'out'), join(full, 'err')]);
  writeFileSync(join(full, 'run'), 'x');
  const removed = removeFlatDir(full);
  assert.equal(existsSync(full), false, 'removed at once');
  await removed;

  // No run file (the command failed before it was written): the rest goes all the same.
  const partial = join(root, 'c2');
  mkdirSync(partial);
  execFileSync('mkfifo', [join(partial, 'out')]);
  const removedPartial = removeFlatDir(partial);
  assert.equal(existsSync(partial), false);
  await removedPartial;
});

test('a run dir of files goes at once; one with a subdirectory goes by the recursive removal; a missing one is no error', async () => {
  const flat = join(root, 'r1');
  mkdirSync(flat);
  writeFileSync(join(flat, 'main.py'), 'print(1)');
  writeFileSync(join(flat, 'data'), 'x');
  const removed = removeFlatDir(flat);
  assert.equal(existsSync(flat), false, 'removed before the promise settles');
  await removed;
  const nested = join(root, 'r2');
  mkdirSync(join(nested, 'sub'), { recursive: true });
  writeFileSync(join(nested, 'sub', 'f'), 'x');
  await removeFlatDir(nested);
  assert.equal(existsSync(nested), false);
  await removeFlatDir(join(root, 'never-made'));
});
