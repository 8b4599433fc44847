/**
 * The tar upload guard: archives made by the host's GNU tar (long names, pax headers, links inside) pass through
 * unchanged; hand-made headers with absolute names, `..`, links out, devices, fifos, bad checksums and truncation are
 * refused with SANDBOX_TAR_INVALID. Fed in odd-sized chunks so that header boundaries fall inside chunks.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { MAX_META_BYTES, TarGuard } from './tar-guard.js';

/** One ustar header block (checksum filled in). */
function header(name: string, options: { type?: string; size?: number; link?: string; checksum?: 'ok' | 'bad' } = {}): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, 'utf8');
  block.write('0000644\0', 100, 'latin1');
  block.write('0000000\0', 108, 'latin1');
  block.write('0000000\0', 116, 'latin1');
  block.write(`${(options.size ?? 0).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  block.write('00000000000\0', 136, 'latin1');
  block.write(options.type ?? '0', 156, 'latin1');
  block.write(options.link ?? '', 157, 100, 'utf8');
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  if (options.checksum === 'bad') sum += 1;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}

const data = (bytes: number): Buffer => Buffer.concat([Buffer.alloc(bytes, 0x61), Buffer.alloc((512 - (bytes % 512)) % 512)]);
const END = Buffer.alloc(1024);
const pax = (records: Record<string, string>): Buffer => {
  let body = '';
  for (const [key, value] of Object.entries(records)) {
    const rest = ` ${key}=${value}\n`;
    let length = rest.length + 1;
    while (`${length}${rest}`.length !== length) length++;
    body += `${length}${rest}`;
  }
  return Buffer.concat([header('PaxHeader', { type: 'x', size: Buffer.byteLength(body) }), data(0), Buffer.from(body), Buffer.alloc((512 - (Buffer.byteLength(body) % 512)) % 512)]);
};

/** Feeds `archive` in 97-byte chunks; resolves with the bytes passed on and the summary, or rejects with the guard's error. */
async function run(archive: Buffer): Promise<{ out: Buffer; entries: number; bytes: number }> {
  const guard = new TarGuard();
  const chunks: Buffer[] = [];
  const pieces: Buffer[] = [];
  for (let at = 0; at < archive.length; at += 97) pieces.push(archive.subarray(at, at + 97));
  await pipeline(Readable.from(pieces), guard, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) chunks.push(chunk);
  });
  return { out: Buffer.concat(chunks), ...guard.summary };
}

const refused = (pattern: RegExp) => (error: unknown) => error instanceof KindlingError && error.code === 'SANDBOX_TAR_INVALID' && pattern.test(error.message);

const dir = mkdtempSync(join(tmpdir(), 'kindling-tar-guard-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('TarGuard', () => {
  it('passes an archive of GNU tar (long names, pax, links inside) through unchanged and counts it', async () => {
    const root = join(dir, 'good');
    const long = 'd'.repeat(120);
    mkdirSync(join(root, 'sub', long), { recursive: true });
    writeFileSync(join(root, 'sub', long, `${'f'.repeat(150)}.txt`), 'x'.repeat(1000));
    writeFileSync(join(root, 'a.txt'), 'hello');
    symlinkSync('a.txt', join(root, 'sub', 'up'));
    symlinkSync('../a.txt', join(root, 'sub', 'parent'));
    for (const format of ['gnu', 'pax']) {
      const archive = execFileSync('tar', ['-C', root, `--format=${format}`, '-cf', '-', '.']);
      const { out, entries, bytes } = await run(archive);
      // Unchanged up to the end-of-archive marker (two zero blocks); tar's padding to its record size is not passed on.
      assert.ok(out.length < archive.length && out.equals(archive.subarray(0, out.length)), `${format}: bytes unchanged up to the end`);
      assert.ok(out.subarray(-1024).every((byte) => byte === 0) && archive.subarray(out.length).every((byte) => byte === 0), `${format}: ends with the marker, only zeros dropped`);
      assert.equal(bytes, 1005, format);
      assert.ok(entries >= 6, `${format}: ${entries} entries`);
    }
    const hand = Buffer.concat([pax({ path: `x/${'p'.repeat(300)}`, size: '3' }), header('ignored', { size: 0 }), data(3), END]);
    assert.equal((await run(hand)).bytes, 3, 'the pax size applies');
  });

  it('refuses entries that leave the directory, devices, fifos and corrupt or truncated archives', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['absolute', Buffer.concat([header('/etc/passwd', { size: 1 }), data(1), END]), /absolute/],
      ['dot-dot', Buffer.concat([header('a/../../x', { size: 1 }), data(1), END]), /"\.\." segment/],
      ['symlink absolute', Buffer.concat([header('l', { type: '2', link: '/proc/1/root' }), END]), /symlink to "\/proc\/1\/root"/],
      ['symlink climbing', Buffer.concat([header('a/l', { type: '2', link: '../../etc' }), END]), /outside the target/],
      ['hard link out', Buffer.concat([header('h', { type: '1', link: '../x' }), END]), /hard link target/],
      ['char device', Buffer.concat([header('tty', { type: '3' }), END]), /character device/],
      ['fifo', Buffer.concat([header('p', { type: '6' }), END]), /fifo/],
      ['pax path out', Buffer.concat([pax({ path: '../../evil' }), header('fine', { size: 0 }), END]), /"\.\." segment/],
      ['gnu long name out', Buffer.concat([header('././@LongLink', { type: 'L', size: 11 }), data(0), Buffer.from('/etc/shadow'), Buffer.alloc(501), header('fine'), END]), /absolute/],
      ['bad checksum', Buffer.concat([header('x', { size: 1, checksum: 'bad' }), data(1), END]), /checksum/],
      ['truncated', Buffer.concat([header('x', { size: 4000 }), data(100)]), /ended in the middle/],
      ['empty', Buffer.alloc(0), /ended in the middle|empty/],
      ['huge pax', Buffer.concat([header('PaxHeader', { type: 'x', size: MAX_META_BYTES + 1 }), END]), /at most/],
      ['not a tar', Buffer.from('PK\x03\x04 this is a zip file'.padEnd(600, '!')), /checksum/],
    ];
    for (const [label, archive, pattern] of cases) await assert.rejects(run(archive), refused(pattern), label);
  });

  it('names the entry in details.entry and a refused link target in details.linkTarget', async () => {
    const details = async (archive: Buffer): Promise<Record<string, unknown> | undefined> => {
      try {
        await run(archive);
      } catch (error) {
        return (error as KindlingError).details;
      }
      assert.fail('the archive was accepted');
    };
    assert.deepEqual(await details(Buffer.concat([header('h', { type: '1', link: '../x' }), END])), { entry: 'h', linkTarget: '../x' });
    assert.deepEqual(await details(Buffer.concat([header('h2', { type: '1', link: '/etc/passwd' }), END])), { entry: 'h2', linkTarget: '/etc/passwd' });
    assert.equal((await details(Buffer.concat([header('l', { type: '2', link: '/proc/1/root' }), END])))?.linkTarget, '/proc/1/root');
    assert.deepEqual(await details(Buffer.concat([header('a/../../x', { size: 1 }), data(1), END])), { entry: 'a/../../x' });
  });

  it('passes nothing after the end-of-archive marker, so tar exiting there never fails the upload', async () => {
    const root = join(dir, 'padded');
    mkdirSync(join(root, 'in'), { recursive: true });
    writeFileSync(join(root, 'in', 'a.txt'), 'hello');
    const target = join(root, 'out');
    mkdirSync(target);
    // Much more padding than a pipe holds: GNU tar stops reading at the end blocks and exits; a write after that
    // met a closed pipe (EPIPE, "Premature close") and the upload was refused.
    const archive = Buffer.concat([execFileSync('tar', ['-C', join(root, 'in'), '-cf', '-', 'a.txt']), Buffer.alloc(4 << 20)]);
    const tar = spawn('tar', ['-x', '-C', target, '-f', '-'], { stdio: ['pipe', 'ignore', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => tar.on('close', resolve));
    await pipeline(Readable.from([archive]), new TarGuard(), tar.stdin);
    assert.equal(await exited, 0);
    assert.equal(readFileSync(join(target, 'a.txt'), 'utf8'), 'hello');
  });

  it('stops checking at the end-of-archive block (tar reads nothing after it)', async () => {
    const archive = Buffer.concat([header('ok', { size: 2 }), data(2), END, header('/after/end', { size: 0 })]);
    assert.equal((await run(archive)).entries, 1);
  });
});
