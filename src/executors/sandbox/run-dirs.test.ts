/** RunDirs.rootHas: whether an image root has the mount points of an execution (a tree of real files, no mount). */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { noopLogger } from '../shared/logger.js';
import { RunDirs } from './run-dirs.js';

test('a mount point is a real directory (or a file for a file bind), reached through real directories only; answers are cached', (t) => {
  const top = fs.mkdtempSync(path.join(tmpdir(), 'run-dirs-'));
  t.after(() => fs.rmSync(top, { recursive: true, force: true }));
  const root = path.join(top, 'root');
  for (const dir of ['proc', 'dev', 'tmp', '.kindling', 'work', 'opt/app', 'real']) fs.mkdirSync(path.join(root, dir), { recursive: true });
  fs.writeFileSync(path.join(root, '.kindling-supervisor'), '');
  // A link of the image: followed on the host it would reach the host's /etc.
  fs.symlinkSync('/etc', path.join(root, 'linked'));
  fs.symlinkSync('real', path.join(root, 'relative'));
  const dirSource = path.join(top, 'dir-source');
  const fileSource = path.join(top, 'file-source');
  fs.mkdirSync(dirSource);
  fs.writeFileSync(fileSource, '');
  const dirs = new RunDirs({ baseDir: path.join(top, 'state'), ownerId: 'test' }, 0, noopLogger);
  const has = (target: string, source: string | null = null): boolean => dirs.rootHas(root, [{ target, source }]);

  assert.equal(dirs.rootHas(root, ['/proc', '/dev', '/tmp', '/.kindling', '/work'].map((target) => ({ target, source: null }))), true);
  assert.equal(has('/opt/app'), true);
  assert.equal(has('/work', dirSource), true);
  assert.equal(has('/.kindling-supervisor', fileSource), true);
  // The wrong kind, nothing there, a link on the way or at the end, a source that is gone.
  assert.equal(has('/.kindling-supervisor'), false);
  assert.equal(has('/work', fileSource), false);
  assert.equal(has('/app'), false);
  assert.equal(has('/linked/ssl'), false);
  assert.equal(has('/relative'), false);
  assert.equal(has('/work', path.join(top, 'gone')), false);
  assert.equal(has('/opt/../work'), false);
  // One missing target is enough to bind the image entry by entry.
  assert.equal(dirs.rootHas(root, [{ target: '/proc', source: null }, { target: '/app', source: null }]), false);
  // An image's own /.kindling with something in it would show where an execution has no files of its own.
  const other = path.join(top, 'other');
  fs.mkdirSync(path.join(other, '.kindling'), { recursive: true });
  fs.writeFileSync(path.join(other, '.kindling', 'left-by-the-image'), '');
  assert.equal(dirs.rootHas(other, [{ target: '/.kindling', source: null }]), false);
  // Image roots do not change: an answer is kept.
  fs.mkdirSync(path.join(root, 'app'));
  assert.equal(has('/app'), false);
});
