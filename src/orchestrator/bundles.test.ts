/**
 * The bundle store against the host's GNU tar: a directory's archive is unpacked once per content hash, readable by
 * every uid and owned by root; unsafe archives (links out, link chains a lexical check accepts) leave nothing behind;
 * collect() keeps what versions refer to and what was just uploaded (pinned), and removes the rest.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { BundleStore } from './bundles.js';
import { parseBundleHandler } from './function-service.js';

const root = mkdtempSync(join(tmpdir(), 'kindling-bundle-store-'));
chmodSync(root, 0o755);
after(() => rmSync(root, { recursive: true, force: true }));

function tarOf(files: Record<string, string>, extra: string[] = []): Buffer {
  const dir = mkdtempSync(join(root, 'src-'));
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), content, { mode: 0o600 });
  }
  return execFileSync('tar', ['-c', '-f', '-', ...extra, '-C', dir, '.']);
}

describe('BundleStore', { skip: process.getuid?.() === 0 ? false : 'needs root (tar runs as uid 65534 and the tree is given to root)' }, () => {
  it('unpacks once per content, readable by everyone, owned by root, and collects what nothing refers to', async () => {
    const store = new BundleStore({ dir: join(root, 'store-a') });
    const tar = tarOf({ 'a/b.txt': 'hello' });
    const info = await store.ingest(Readable.from([tar]));
    assert.equal(info.sha256, createHash('sha256').update(tar).digest('hex'));
    assert.equal(info.bytes, tar.length);
    const file = join(store.pathOf(info.sha256), 'a', 'b.txt');
    const stat = statSync(file);
    assert.equal(stat.uid, 0);
    assert.equal(stat.mode & 0o777, 0o644, 'a 0600 file of the archive is readable by sandbox uids');
    assert.equal((await store.ingest(Readable.from([tar]))).sha256, info.sha256);
    // Pinned twice (two uploads not yet stored): collect keeps it until both are released.
    assert.deepEqual(await store.collect(new Set()), []);
    store.release(info.sha256);
    store.release(info.sha256);
    assert.deepEqual(await store.collect(new Set([info.sha256])), []);
    assert.deepEqual(await store.collect(new Set()), [info.sha256]);
    assert.equal(existsSync(file), false);
  });

  it('takes an archive that ends on a tar record boundary even when the upload ends after tar has exited', async () => {
    // Two headers (./ and f.bin) and 16 data blocks, then the two end blocks: 20 blocks, exactly one record of GNU tar's reads, so
    // tar exits at the end blocks without waiting for end of file. The upload ends 100 ms later (a request's end that
    // comes after its last bytes): tar has exited by then, and its stdin with it. This failed with "Premature close".
    const tar = tarOf({ 'f.bin': 'y'.repeat(16 * 512) }, ['-b', '1']);
    assert.equal(tar.length, 20 * 512);
    const store = new BundleStore({ dir: join(root, 'store-c') });
    const slowEnd = (bytes: Buffer): Readable =>
      Readable.from(
        (async function* (): AsyncGenerator<Buffer> {
          yield bytes;
          await new Promise((resolve) => setTimeout(resolve, 100));
        })(),
      );
    const info = await store.ingest(slowEnd(tar));
    assert.equal(info.sha256, createHash('sha256').update(tar).digest('hex'));
    assert.equal(statSync(join(store.pathOf(info.sha256), 'f.bin')).size, 16 * 512);
    // A record-padded archive (tar's default -b 20) with bytes after its end blocks: read to the end for the hash.
    const padded = tarOf({ 'g.txt': 'z' });
    const more = await store.ingest(slowEnd(padded));
    assert.equal(more.sha256, createHash('sha256').update(padded).digest('hex'));
    assert.equal(more.bytes, padded.length);
  });

  it('still refuses an archive tar cannot read to its end (cut in the middle of an entry)', async () => {
    const store = new BundleStore({ dir: join(root, 'store-d') });
    const tar = tarOf({ 'h.bin': 'w'.repeat(40 * 1024) });
    await assert.rejects(store.ingest(Readable.from([tar.subarray(0, 20 * 512)])), (error: unknown) => error instanceof KindlingError && error.code === 'BUNDLE_INVALID');
    assert.deepEqual(readdirSync(join(root, 'store-d')), []);
  });

  it('refuses a link chain out of the bundle and a file over the limit, leaving no staging directory', async () => {
    const store = new BundleStore({ dir: join(root, 'store-b'), maxBytes: 64 * 1024 });
    const chain = execFileSync('python3', ['-c', [
      'import tarfile, io, sys',
      't = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.USTAR_FORMAT)',
      'def add(name, typ, link="", data=b""):',
      '    ti = tarfile.TarInfo(name); ti.type = typ; ti.linkname = link; ti.size = len(data)',
      '    t.addfile(ti, io.BytesIO(data) if data else None)',
      'add("d", tarfile.DIRTYPE); add("d/l", tarfile.SYMTYPE, ".."); add("d/l2", tarfile.SYMTYPE, "l/.."); add("d/l2/escaped.txt", tarfile.REGTYPE, data=b"x")',
      't.close()',
    ].join('\n')]);
    await assert.rejects(store.ingest(Readable.from([chain])), (error: unknown) => error instanceof KindlingError && error.code === 'BUNDLE_INVALID');
    assert.equal(existsSync(join(root, 'escaped.txt')), false);
    const big = tarOf({ 'big.bin': 'x'.repeat(100 * 1024) });
    await assert.rejects(store.ingest(Readable.from([big])), (error: unknown) => error instanceof KindlingError && error.code === 'PAYLOAD_TOO_LARGE');
    assert.deepEqual(readdirSync(join(root, 'store-b')), []);
  });
});

describe('parseBundleHandler', () => {
  it('takes FILE:FUNCTION with a clean relative FILE, nothing else', () => {
    assert.deepEqual(parseBundleHandler('src/index.js:handler'), { file: 'src/index.js', fn: 'handler' });
    assert.deepEqual(parseBundleHandler('handler.py:main'), { file: 'handler.py', fn: 'main' });
    for (const bad of ['main', ':main', 'a.js:', '../a.js:main', '/a.js:main', 'a//b.js:main', './a.js:main', 'a.js:not-a-name']) {
      assert.equal(parseBundleHandler(bad), null, bad);
    }
  });
});
