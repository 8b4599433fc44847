/**
 * Read-only host directories for microVMs (a function's bundle at /work, its dependencies at /work/node_modules): a
 * VM sees only its disks, so each directory becomes an ext4 disk, made once and attached read-only to every VM that
 * binds it; the guest agent mounts it at its target (label -> device with findfs).
 *
 *   <dir>/<key>.ext4   key = hash of the directory's path and the mount points made in it; label `kb-<key>`
 *
 * The directories given are immutable (the bundle and layer stores name them by content hash), so a disk made from one
 * stays true, and two functions with the same dependencies share one disk as they share one layer. A directory with a
 * nested bind (node_modules under the bundle) gets an empty directory for it in its disk: the disk is read-only, so the
 * mount point must exist in it. Disks nobody asked for in a while are removed by the executor's ageOut() (as its
 * snapshots).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { utimesSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
/** Bumped when the layout of the disks changes, so older disks are not reused (and age out). */
const FORMAT = 1;

export interface BindDisk {
  /** The ext4 image on the host (attached read-only). */
  file: string;
  /** Its file system's label, at most 16 characters: how the guest finds its device. */
  label: string;
  /** Where the guest mounts it. */
  target: string;
}

export interface BindDiskOptions {
  dir: string;
  mkfsBinary?: string;
  debugfsBinary?: string;
}

export class BindDisks {
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly options: BindDiskOptions) {}

  /** The disks of `binds`, in the order given, made where missing. */
  async disksFor(binds: readonly { source: string; target: string }[]): Promise<BindDisk[]> {
    return Promise.all(
      binds.map(async (bind) => {
        const nested = binds.filter((other) => other !== bind && other.target.startsWith(`${bind.target}/`)).map((other) => path.posix.relative(bind.target, other.target));
        const key = createHash('sha256').update(JSON.stringify([FORMAT, path.resolve(bind.source), nested.sort()])).digest('hex').slice(0, 13);
        const file = await this.diskOf(key, bind.source, nested);
        return { file, label: `kb-${key}`, target: bind.target };
      }),
    );
  }

  private diskOf(key: string, source: string, mountPoints: string[]): Promise<string> {
    const file = path.join(this.options.dir, `${key}.ext4`);
    let made = this.pending.get(key);
    if (made === undefined) {
      made = this.make(file, `kb-${key}`, source, mountPoints).finally(() => this.pending.delete(key));
      this.pending.set(key, made);
    }
    return made;
  }

  private async make(file: string, label: string, source: string, mountPoints: string[]): Promise<string> {
    // Touched as its last use, for the executor's ageOut(): a disk touched is kept for another snapshotMaxAgeMs; one
    // removed before the touch (ENOENT) is made anew.
    // Synchronous: on the event loop it cannot land between ageOut()'s last look and its rename (a thread-pool utimes
    // could); a few µs.
    let exists = true;
    try {
      const now = new Date();
      utimesSync(file, now, now);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      exists = false;
    }
    if (exists) return file;
    await fs.mkdir(this.options.dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      const tree = await treeSize(source);
      // Room for the files and the file system's own blocks (inode tables, bitmaps): a quarter more plus 8 MiB. No
      // journal: the disk is written once, here, and read-only after. One inode per entry, with room to spare.
      const sizeMiB = Math.ceil((tree.bytes * 1.25) / 1048576) + 8;
      const inodes = tree.entries + 1024;
      await execFileAsync(this.options.mkfsBinary ?? '/usr/sbin/mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-m', '0', '-b', '4096', '-N', String(inodes), '-L', label, '-E', 'root_owner=0:0', '-d', source, tmp, `${sizeMiB}M`]);
      for (const dir of mountPoints) {
        // Each level of a nested mount point (".deps", "a/b"): debugfs mkdir does not make parents.
        const parts = dir.split('/');
        for (let i = 1; i <= parts.length; i++) {
          await execFileAsync(this.options.debugfsBinary ?? '/usr/sbin/debugfs', ['-w', '-R', `mkdir /${parts.slice(0, i).join('/')}`, tmp]);
        }
      }
      await fs.chmod(tmp, 0o444);
      await fs.rename(tmp, file);
      return file;
    } catch (error) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw new Error(`could not make a disk of ${source}: ${(error as Error).message}`, { cause: error });
    }
  }
}

/** The entries under `dir` and the bytes they take: each file rounded up to 4 KiB blocks, one block per entry. */
async function treeSize(dir: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  const walk = async (current: string): Promise<void> => {
    for (const entry of await fs.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      entries++;
      bytes += 4096;
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) bytes += Math.ceil((await fs.stat(full)).size / 4096) * 4096;
    }
  };
  await walk(dir);
  return { bytes, entries };
}
