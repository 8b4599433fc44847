/**
 * A writer for the "newc" cpio format (the one the Linux kernel unpacks as an initramfs). Enough for what the microvm
 * executor puts in its initramfs: directories, regular files and symlinks, all owned by root.
 */

export interface CpioEntry {
  /** Path inside the archive, without a leading slash (e.g. `bin/busybox`). */
  name: string;
  kind: 'dir' | 'file' | 'symlink';
  /** Permission bits (e.g. 0o755). */
  mode: number;
  /** File contents, or the link target for a symlink. */
  data?: Buffer | string;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');
const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

function header(ino: number, mode: number, size: number, nameSize: number): string {
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  return '070701' + [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nameSize, 0].map(hex8).join('');
}

function record(ino: number, mode: number, name: string, data: Buffer): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const head = Buffer.from(header(ino, mode, data.length, nameBytes.length), 'ascii');
  return [head, nameBytes, pad4(head.length + nameBytes.length), data, pad4(data.length)];
}

/** The archive bytes: every entry in order, then the TRAILER!!! record. Parents must come before children. */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  entries.forEach((entry, index) => {
    const type = entry.kind === 'dir' ? S_IFDIR : entry.kind === 'symlink' ? S_IFLNK : S_IFREG;
    const data = entry.kind === 'dir' ? Buffer.alloc(0) : Buffer.from(entry.data ?? '');
    parts.push(...record(index + 1, type | (entry.mode & 0o7777), entry.name.replace(/^\/+/, ''), data));
  });
  parts.push(...record(0, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}
