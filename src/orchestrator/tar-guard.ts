/**
 * Checks an uploaded tar archive as it streams through, before its bytes reach `tar -x` inside the sandbox: every
 * entry must stay inside the target directory. Refused: absolute names, `..` segments, symlinks whose target is
 * absolute or climbs out of the directory, hard links to such names, device files, fifos and any type `tar` might
 * treat specially (sparse, multi-volume), and headers whose checksum is wrong (tar would skip them and resync on
 * bytes this guard read as data). GNU long names (`L`/`K`) and pax headers (`x`: path, linkpath, size) are applied
 * as tar applies them. Memory is bounded: one 512-byte header plus at most MAX_META_BYTES of long-name/pax data.
 *
 * The extraction itself runs inside the sandbox (its mount namespace, its uid), so even a case missed here cannot
 * reach the host; the guard makes an unsafe archive a clear 400 instead of files in surprising places.
 */
import { posix } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { KindlingError } from '../core/errors.js';

const BLOCK = 512;
/** Long names and pax headers larger than this are refused (real ones are a few hundred bytes). */
export const MAX_META_BYTES = 64 * 1024;

/** Entry types passed on: files, hard links, symlinks, directories, and the metadata types applied here. */
const FILE_TYPES = new Set(['0', '\0', '7']);

export interface TarSummary {
  entries: number;
  /** Bytes of file contents. */
  bytes: number;
}

type Phase = { kind: 'header' } | { kind: 'data'; left: number; pad: number } | { kind: 'meta'; type: string; left: number; pad: number; chunks: Buffer[] } | { kind: 'end' };

export class TarGuard extends Transform {
  readonly summary: TarSummary = { entries: 0, bytes: 0 };
  private phase: Phase = { kind: 'header' };
  private header = Buffer.alloc(0);
  /** Overrides from `L`/`K`/`x` entries for the next entry. */
  private next: { path?: string; linkpath?: string; size?: number } = {};

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    if (this.phase.kind === 'end') {
      // Past the end of the archive (a writer's padding to its record size): tar would not read it, and once tar
      // has exited after the end blocks, writing it fails the upload with EPIPE. It is consumed here instead.
      done();
      return;
    }
    let endAt: number | null;
    try {
      endAt = this.scan(chunk);
    } catch (error) {
      done(error as Error);
      return;
    }
    // The archive ends in this chunk: pass on up to its first zero block, and a second one, so tar sees a complete
    // end-of-archive marker and nothing after it.
    done(null, endAt === null ? chunk : Buffer.concat([chunk.subarray(0, endAt), Buffer.alloc(BLOCK)]));
  }

  override _flush(done: TransformCallback): void {
    if (this.phase.kind !== 'end' && (this.phase.kind !== 'header' || this.header.length > 0 || this.summary.entries === 0)) {
      done(invalid('the archive ended in the middle of an entry (or is empty): upload a complete tar file'));
      return;
    }
    done();
  }

  /** Checks the entries that `chunk` holds; returns where the archive's first zero block ends in it, if it does. */
  private scan(chunk: Buffer): number | null {
    let at = 0;
    while (at < chunk.length) {
      const phase = this.phase;
      if (phase.kind === 'end') return at;
      if (phase.kind === 'data') {
        const take = Math.min(phase.left + phase.pad, chunk.length - at);
        at += take;
        const fromData = Math.min(take, phase.left);
        phase.left -= fromData;
        phase.pad -= take - fromData;
        if (phase.left === 0 && phase.pad === 0) this.phase = { kind: 'header' };
        continue;
      }
      if (phase.kind === 'meta') {
        const take = Math.min(phase.left + phase.pad, chunk.length - at);
        const fromData = Math.min(take, phase.left);
        if (fromData > 0) phase.chunks.push(chunk.subarray(at, at + fromData));
        at += take;
        phase.left -= fromData;
        phase.pad -= take - fromData;
        if (phase.left === 0 && phase.pad === 0) {
          this.applyMeta(phase.type, Buffer.concat(phase.chunks));
          this.phase = { kind: 'header' };
        }
        continue;
      }
      const take = Math.min(BLOCK - this.header.length, chunk.length - at);
      this.header = Buffer.concat([this.header, chunk.subarray(at, at + take)]);
      at += take;
      if (this.header.length === BLOCK) {
        const block = this.header;
        this.header = Buffer.alloc(0);
        this.onHeader(block);
      }
    }
    return this.phase.kind === 'end' ? at : null;
  }

  private onHeader(block: Buffer): void {
    // A zero block ends the archive: tar stops reading entries there (what follows is ignored).
    if (block.every((byte) => byte === 0)) {
      this.phase = { kind: 'end' };
      return;
    }
    checkChecksum(block);
    const type = String.fromCharCode(block[156]!);
    const meta = type === 'L' || type === 'K' || type === 'x' || type === 'g';
    // A pax size applies to the next real entry, not to a metadata entry between.
    const size = meta ? readNumber(block, 124, 12) : (this.next.size ?? readNumber(block, 124, 12));
    if (!Number.isSafeInteger(size) || size < 0) throw invalid('an entry has an unreadable size');
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (meta) {
      if (size > MAX_META_BYTES) throw invalid(`a long-name or pax header holds ${size} bytes (at most ${MAX_META_BYTES})`);
      this.phase = size === 0 ? { kind: 'header' } : { kind: 'meta', type, left: size, pad, chunks: [] };
      if (size === 0) this.applyMeta(type, Buffer.alloc(0));
      return;
    }
    const ustar = block.subarray(257, 262).toString('latin1') === 'ustar';
    const prefix = ustar ? cString(block, 345, 155) : '';
    const name = this.next.path ?? (prefix === '' ? cString(block, 0, 100) : `${prefix}/${cString(block, 0, 100)}`);
    const link = this.next.linkpath ?? cString(block, 157, 100);
    this.next = {};
    checkName(name, 'name');
    if (type === '2') checkSymlink(name, link);
    else if (type === '1') checkName(link, `hard link target of "${clip(name)}"`, name);
    else if (type !== '5' && !FILE_TYPES.has(type)) {
      throw new KindlingError('SANDBOX_TAR_INVALID', `tar entry "${clip(name)}" is ${describeType(type)}: only files, directories, symlinks and hard links can be uploaded`, { details: { entry: clip(name), type } });
    }
    this.summary.entries++;
    // Links and directories carry no data whatever their size field says (tar skips nothing for them).
    const dataSize = type === '1' || type === '2' || type === '5' ? 0 : size;
    if (FILE_TYPES.has(type)) this.summary.bytes += dataSize;
    const dataPad = (BLOCK - (dataSize % BLOCK)) % BLOCK;
    this.phase = dataSize === 0 ? { kind: 'header' } : { kind: 'data', left: dataSize, pad: dataPad };
  }

  private applyMeta(type: string, data: Buffer): void {
    if (type === 'L') this.next.path = cString(data, 0, data.length);
    else if (type === 'K') this.next.linkpath = cString(data, 0, data.length);
    else {
      const records = parsePax(data);
      // A global header applies to every later entry: a path or link there would name them all; refused.
      if (type === 'g' && ('path' in records || 'linkpath' in records || 'size' in records)) throw invalid('a global pax header sets path, linkpath or size');
      if (type === 'x') {
        if (records.path !== undefined) this.next.path = records.path;
        if (records.linkpath !== undefined) this.next.linkpath = records.linkpath;
        if (records.size !== undefined) {
          const size = Number(records.size);
          if (!/^\d+$/.test(records.size) || !Number.isSafeInteger(size)) throw invalid('a pax header has an unreadable size');
          this.next.size = size;
        }
      }
    }
  }
}

function invalid(message: string): KindlingError {
  return new KindlingError('SANDBOX_TAR_INVALID', `not an acceptable tar archive: ${message}`, {});
}

const clip = (text: string): string => text.slice(0, 200);

/**
 * A name inside the target directory: relative, no `..` segment, not empty. `entry` is the entry being checked when
 * `name` is its hard link's target: `details.entry` always names the entry (what the user finds in the archive
 * listing), `details.linkTarget` the refused target.
 */
function checkName(name: string, what: string, entry = name): void {
  const details = entry === name ? { entry: clip(name) } : { entry: clip(entry), linkTarget: clip(name) };
  if (name === '' || name.includes('\0')) throw new KindlingError('SANDBOX_TAR_INVALID', `a tar entry has an empty ${what}`, { details: entry === name ? {} : { entry: clip(entry) } });
  if (name.startsWith('/')) throw new KindlingError('SANDBOX_TAR_INVALID', `tar entry ${what} "${clip(name)}" is absolute: entries must be relative to the target directory`, { details });
  if (name.split('/').includes('..')) throw new KindlingError('SANDBOX_TAR_INVALID', `tar entry ${what} "${clip(name)}" has a ".." segment: entries must stay inside the target directory`, { details });
}

/** A symlink's target, resolved from the link's own directory, must stay inside the target directory. */
function checkSymlink(name: string, target: string): void {
  const resolved = posix.normalize(posix.join(posix.dirname(name.replace(/\/+$/, '')), target));
  if (target === '' || target.startsWith('/') || resolved === '..' || resolved.startsWith('../')) {
    throw new KindlingError('SANDBOX_TAR_INVALID', `tar entry "${clip(name)}" is a symlink to "${clip(target)}", outside the target directory: links must point inside it`, { details: { entry: clip(name), linkTarget: clip(target), target: clip(target) } });
  }
}

function describeType(type: string): string {
  switch (type) {
    case '3':
      return 'a character device';
    case '4':
      return 'a block device';
    case '6':
      return 'a fifo';
    default:
      return `of type "${type.replace(/[^\x20-\x7e]/g, '?')}"`;
  }
}

function cString(buffer: Buffer, start: number, length: number): string {
  const slice = buffer.subarray(start, start + length);
  const end = slice.indexOf(0);
  return slice.subarray(0, end === -1 ? slice.length : end).toString('utf8');
}

/** An octal field, or GNU base-256 (high bit of the first byte set). */
function readNumber(block: Buffer, start: number, length: number): number {
  const field = block.subarray(start, start + length);
  if ((field[0]! & 0x80) !== 0) {
    if ((field[0]! & 0x40) !== 0) return -1;
    let value = field[0]! & 0x3f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    return value;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return -1;
  return parseInt(text, 8);
}

/** The header checksum: unsigned (POSIX) or signed (old tars) sum with the checksum field read as spaces. */
function checkChecksum(block: Buffer): void {
  const stored = readNumber(block, 148, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  if (stored !== unsigned && stored !== signed) throw invalid('a header checksum is wrong (a corrupt archive, or not a tar file)');
}

/** pax records: "LEN key=value\n" each. */
function parsePax(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space === -1) break;
    const length = Number(data.subarray(at, space).toString('latin1'));
    if (!Number.isInteger(length) || length <= 0 || at + length > data.length) throw invalid('a pax header is malformed');
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return records;
}
