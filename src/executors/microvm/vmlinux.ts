/**
 * An uncompressed `vmlinux` (ELF) from a bzImage (`vmlinuz`), for Firecracker, which boots only ELF kernels on x86_64.
 * Same idea as the kernel's scripts/extract-vmlinux, done properly: the x86 boot header (protocol >= 2.08) names the
 * compressed payload's offset and length, its magic names the compressor; older or odd images fall back to scanning
 * for every known magic and keeping the first candidate that decompresses to an ELF.
 *
 * gzip is decompressed in-process (zlib); xz, lzma, bzip2, zstd and lz4 with the host's tools (Debian's kernels are
 * xz-compressed: `xz-utils` is essential-adjacent and installed here).
 */
import { spawn } from 'node:child_process';
import { gunzipSync } from 'node:zlib';

export type Compression = 'gzip' | 'xz' | 'lzma' | 'bzip2' | 'zstd' | 'lz4';

const MAGICS: Array<[Compression, Buffer]> = [
  ['gzip', Buffer.from([0x1f, 0x8b, 0x08])],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
  ['lzma', Buffer.from([0x5d, 0x00, 0x00, 0x00])],
  ['bzip2', Buffer.from('BZh', 'latin1')],
  ['lz4', Buffer.from([0x02, 0x21, 0x4c, 0x18])],
];

const TOOLS: Record<Exclude<Compression, 'gzip'>, string[]> = {
  xz: ['xz', '-dc'],
  lzma: ['xz', '--format=lzma', '-dc'],
  bzip2: ['bzip2', '-dc'],
  zstd: ['zstd', '-dcq'],
  lz4: ['lz4', '-dc'],
};

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export const isElf = (data: Buffer): boolean => data.length > 4 && data.subarray(0, 4).equals(ELF_MAGIC);

export function compressionOf(data: Buffer): Compression | null {
  for (const [name, magic] of MAGICS) if (data.length >= magic.length && data.subarray(0, magic.length).equals(magic)) return name;
  return null;
}

/** The compressed payload as the boot header describes it, or null when the header is too old or not there. */
export function bootHeaderPayload(bzImage: Buffer): Buffer | null {
  if (bzImage.length < 0x250 || bzImage.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  if (bzImage.readUInt16LE(0x206) < 0x208) return null;
  const setupSectors = bzImage[0x1f1] || 4;
  const offset = (setupSectors + 1) * 512 + bzImage.readUInt32LE(0x248);
  const length = bzImage.readUInt32LE(0x24c);
  if (length === 0 || offset + length > bzImage.length) return null;
  return bzImage.subarray(offset, offset + length);
}

export async function decompress(kind: Compression, data: Buffer): Promise<Buffer> {
  if (kind === 'gzip') return gunzipSync(data, { finishFlush: 2 /* Z_SYNC_FLUSH: tolerate trailing bytes */ });
  const [command, ...args] = TOOLS[kind];
  return new Promise((resolve, reject) => {
    const child = spawn(command as string, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.stdin.on('error', () => undefined);
    child.on('error', (error) => reject(new Error(`${command} is needed to decompress a ${kind} kernel: ${error.message}`)));
    child.on('close', (code) => {
      const output = Buffer.concat(out);
      // Like extract-vmlinux: trailing data after the stream makes some tools complain; a whole ELF is what counts.
      if (code === 0 || isElf(output)) resolve(output);
      else reject(new Error(`${command} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString().trim().slice(0, 300)}`));
    });
    child.stdin.end(data);
  });
}

/** The vmlinux (ELF) inside a bzImage; an ELF given as input is returned as it is. Throws when none is found. */
export async function extractVmlinux(bzImage: Buffer): Promise<{ vmlinux: Buffer; compression: Compression | 'none' }> {
  if (isElf(bzImage)) return { vmlinux: bzImage, compression: 'none' };
  const payload = bootHeaderPayload(bzImage);
  const kind = payload ? compressionOf(payload) : null;
  if (payload && kind) {
    const vmlinux = await decompress(kind, payload);
    if (isElf(vmlinux)) return { vmlinux, compression: kind };
  }
  // Fallback: every occurrence of every magic, first that yields an ELF wins.
  const tried: string[] = [];
  for (const [name, magic] of MAGICS) {
    for (let at = bzImage.indexOf(magic); at >= 0 && tried.length < 64; at = bzImage.indexOf(magic, at + 1)) {
      tried.push(`${name}@${at}`);
      try {
        const vmlinux = await decompress(name, bzImage.subarray(at));
        if (isElf(vmlinux)) return { vmlinux, compression: name };
      } catch {}
    }
  }
  throw new Error(`no compressed ELF kernel found in the image (tried ${tried.length ? tried.join(', ') : 'no known magic'})`);
}
