import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { waitFor } from '../../../test/helpers/wait.js';
import { removeCommandDir } from './persistent.js';

const root = mkdtempSync(join(tmpdir(), 'kindling-command-dir-'));
after(() => rmSync(root, { recursive: true, force: true }));

test('a finished command\'s dir goes: its FIFOs and run file, or whatever else it holds', async () => {
  const plain = join(root, 'c1');
  mkdirSync(plain);
  execFileSync('mkfifo', [join(plain, 'in'), join(plain, 'out'), join(plain, 'err')]);
  writeFileSync(join(plain, 'run'), 'x');
  removeCommandDir(plain);
  assert.equal(existsSync(plain), false, 'removed at once');

  // No run file (the command failed before it was written): the rest goes all the same.
  const partial = join(root, 'c2');
  mkdirSync(partial);
  execFileSync('mkfifo', [join(partial, 'out')]);
  removeCommandDir(partial);
  assert.equal(existsSync(partial), false);

  // A name it does not expect (and a subdirectory): the recursive removal takes over.
  const odd = join(root, 'c3');
  mkdirSync(join(odd, 'sub'), { recursive: true });
  writeFileSync(join(odd, 'sub', 'left'), 'x');
  writeFileSync(join(odd, 'run'), 'x');
  removeCommandDir(odd);
  await waitFor(() => !existsSync(odd), { timeoutMs: 10_000, what: 'the dir with unexpected contents to go' });
});

test('a run dir of files goes at once; one with a subdirectory goes by the recursive removal; a missing one is no error', async () => {
  const { removeFlatDir } = await import('./run-dirs.js');
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
