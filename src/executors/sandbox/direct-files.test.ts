/**
 * The host-side file path of persistent sandboxes (direct-files.ts + native/kindling-file.c) on a real directory:
 * files are the sandbox uid's, and every path it does not handle safely (a symlink anywhere, a directory, a FIFO, a
 * file the uid may not open) is answered null before a byte moved, so the caller falls back to a command inside the
 * sandbox. Needs root (the helper drops to the sandbox uid) and the built helper (scripts/build-native.sh).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { DEFAULT_FILE_HELPER_PATH, DirectFiles } from './direct-files.js';

const UID = 65534;
const skip = process.getuid?.() !== 0 ? 'needs root (the helper drops to the sandbox uid)' : !fs.existsSync(DEFAULT_FILE_HELPER_PATH) ? `no ${DEFAULT_FILE_HELPER_PATH}: run scripts/build-native.sh` : false;

async function text(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('direct file access on the host', { skip }, () => {
  let base: string;
  let work: string;
  let tmp: string;
  let outside: string;
  let files: DirectFiles;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'kindling-direct-'));
    fs.chmodSync(base, 0o711);
    work = join(base, 'work');
    tmp = join(base, 'tmp');
    outside = join(base, 'outside');
    for (const dir of [work, tmp, outside]) fs.mkdirSync(dir);
    fs.chownSync(work, UID, UID);
    fs.chmodSync(tmp, 0o1777);
    fs.writeFileSync(join(outside, 'secret'), 'host secret');
    files = new DirectFiles([{ target: '/work', source: work }, { target: '/tmp', source: tmp }], UID, UID);
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  test('writes make parents and files owned by the sandbox uid; reads give the bytes back', async () => {
    const written = await files.write('/work/a/b/c.txt', Readable.from([Buffer.from('hello '), Buffer.from('world')]), 4);
    assert.deepEqual(written, { size: 11 });
    const stat = fs.statSync(join(work, 'a/b/c.txt'));
    assert.equal(stat.uid, UID);
    assert.equal(stat.mode & 0o777, 0o644);
    assert.equal(fs.statSync(join(work, 'a/b')).uid, UID);
    assert.equal(fs.statSync(join(work, 'a/b')).mode & 0o777, 0o755);
    const stream = await files.read('/work/a/b/c.txt');
    assert.ok(stream !== null);
    assert.equal(await text(stream), 'hello world');
    // Overwriting truncates.
    assert.deepEqual(await files.write('/work/a/b/c.txt', Readable.from([Buffer.from('x')]), 4), { size: 1 });
    assert.equal(fs.readFileSync(join(work, 'a/b/c.txt'), 'utf8'), 'x');
    assert.deepEqual(await files.write('/tmp/t', Readable.from([Buffer.from('in tmp')]), 4), { size: 6 });
    assert.equal(fs.readFileSync(join(tmp, 't'), 'utf8'), 'in tmp');
  });

  test('a small file read while its helper already exited keeps its bytes (node flushes unread child output at exit)', async () => {
    await files.write('/work/small.txt', Readable.from([Buffer.from('v3 parent')]), 4);
    const read = async (): Promise<string> => {
      const stream = await files.read('/work/small.txt');
      assert.ok(stream !== null);
      // The consumer comes late, as an HTTP reply does: by then the helper has written its 9 bytes and exited.
      await new Promise((resolve) => setTimeout(resolve, 20));
      return text(stream);
    };
    for (let round = 0; round < 20; round++) assert.deepEqual(await Promise.all([read(), read(), read()]), ['v3 parent', 'v3 parent', 'v3 parent']);
  });

  test('a symlink anywhere on the path, a directory, a FIFO or a missing file is left to the caller, untouched', async () => {
    fs.symlinkSync(join(outside, 'secret'), join(work, 'abs-link'));
    fs.symlinkSync(outside, join(work, 'dir-link'));
    fs.symlinkSync('../outside/secret', join(work, 'rel-link'));
    fs.mkdirSync(join(work, 'd'));
    execFileSync('mkfifo', [join(work, 'fifo')]);
    for (const path of ['/work/abs-link', '/work/dir-link/secret', '/work/rel-link', '/work/d', '/work/fifo', '/work/missing', '/work', '/etc/passwd']) {
      assert.equal(await files.read(path), null, `read ${path}`);
      if (path === '/work/missing') continue;
      const body = new PassThrough();
      body.end('overwrite');
      assert.equal(await files.write(path, body, 4), null, `write ${path}`);
      assert.equal(body.readableLength, 'overwrite'.length, `nothing of the body was read for ${path}`);
    }
    assert.equal(fs.readFileSync(join(outside, 'secret'), 'utf8'), 'host secret');
    assert.deepEqual(fs.readdirSync(outside), ['secret'], 'nothing was made through the links');
    assert.equal(fs.lstatSync(join(work, 'abs-link')).isSymbolicLink(), true);
    // A missing file is made when written.
    assert.deepEqual(await files.write('/work/missing', Readable.from([Buffer.from('made')]), 4), { size: 4 });
  });

  test('permissions are the sandbox uid\'s: a root-only file is left to the caller', async () => {
    fs.writeFileSync(join(work, 'root-only'), 'root');
    fs.chmodSync(join(work, 'root-only'), 0o600);
    assert.equal(await files.read('/work/root-only'), null);
    const body = new PassThrough();
    body.end('x');
    assert.equal(await files.write('/work/root-only', body, 4), null);
    assert.equal(fs.readFileSync(join(work, 'root-only'), 'utf8'), 'root');
  });

  test('an error of the body rejects with it and kills the helper', async () => {
    const body = new PassThrough();
    body.write('start');
    const writing = files.write('/work/broken', body, 4);
    setImmediate(() => body.destroy(new Error('client went away')));
    await assert.rejects(writing, /client went away/);
  });
});

test('a download whose helper fails after it started is an error, never a short file that looks complete', async () => {
  // A stand-in helper (the protocol only: the real one's read errors cannot be caused on demand): it announces 100
  // bytes, sends 10, then reports an I/O error.
  const dir = await mkdtemp(join(tmpdir(), 'kindling-direct-fake-'));
  try {
    const fake = join(dir, 'kindling-file');
    fs.writeFileSync(fake, "#!/bin/sh\nprintf 'o 100\\n' >&3\nprintf 'abcdefghij'\nprintf 'e 5\\n' >&3\nexit 1\n", { mode: 0o755 });
    const files = new DirectFiles([{ target: '/work', source: dir }], UID, UID, fake);
    const stream = await files.read('/work/any.bin');
    assert.ok(stream !== null);
    await assert.rejects(text(stream), /reading failed after 100 bytes were announced \(EIO\)/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
