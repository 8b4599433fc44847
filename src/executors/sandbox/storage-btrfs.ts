/**
 * Files of persistent sandboxes on one btrfs file system per owner: a subvolume per sandbox, a read-only subvolume
 * snapshot per snapshot, and a writable snapshot of that per sandbox made from it. Snapshots and forks copy no data
 * (btrfs shares the extents, copy-on-write): a snapshot is O(1) in the files' bytes and in the number of forks made
 * from it. Measured here: a subvolume snapshot ioctl about 3 ms, against a loop mount of a per-sandbox ext4 disk
 * (20-30 ms) plus an overlay mount, or a `cp -a` of the files for the ext4 design's snapshots (storage.ts).
 *
 * The file system: a sparse image `<dir>/volume.btrfs` (root 0600, the size of the host file system holding it; data
 * and metadata `single`), loop-mounted (nosuid, nodev, noatime, nobarrier) at `<dir>/fs` once per server and kept
 * mounted while sandboxes may use it. The server dying does not unmount it (the kernel keeps the file system and its
 * page cache), so the files survive a kill -9 of the server, and the next server finds it mounted and keeps using it.
 * nobarrier: no cache flush of the loop file per transaction; only a crash of the host could lose recent writes, as
 * with the ext4 design's journal-less disks. Inside it, root's: `disks/<sandbox id>` (0711: bwrap, as the sandbox's uid,
 * finds its binds there; nothing there can be listed; a subvolume holding
 * `work/`, the sandbox's work dir owned by its uid, and `tmp/`, its /tmp, 1777) and `snapshots/<snapshot id>`
 * (0700).
 *
 * The size limit: quotas are on, and each sandbox's subvolume has a qgroup limit of `diskMb` on the bytes it refers
 * to (its work dir, its /tmp and the files of the snapshot it was forked from that it still sees), enforced by the
 * kernel: a write over it fails in the writing process with EDQUOT ("Disk quota exceeded"), the sandbox's error; the
 * host's file system never fills because of one sandbox. (ENOSPC would need XFS project quotas, which this kernel
 * lacks.) A new subvolume would escape its parent's qgroup, so the sandbox's seccomp filter refuses the ioctls that
 * make subvolumes and snapshots (seccomp.ts); the subvolume's root dir is root's, so the sandbox cannot change the
 * subvolume's flags either.
 *
 * A snapshot: a read-only snapshot of the sandbox's subvolume, taken while the sandbox is frozen (persistent.ts);
 * nothing can write to it afterwards (root only could flip its read-only flag, and nothing here does). Its bytes for
 * quotas are its work dir's apparent size. A sandbox made from it starts as a writable snapshot of it, whose /tmp is
 * emptied (the snapshot's /tmp is not part of what a fork sees: moved aside and removed in the background).
 *
 * The btrfs operations are ioctls of one helper process (native/kindling-btrfs.c, btrfs-helper.ts); the file system
 * is made with mkfs.btrfs (btrfs-progs) on first use.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { KindlingError } from '../../core/errors.js';
import type { Logger } from '../shared/logger.js';
import { BtrfsHelper } from './btrfs-helper.js';
import { mountsUnder, runMount } from './private-mounts.js';
import type { Volume } from './storage.js';

const execFileAsync = promisify(execFile);

export interface BtrfsStorageOptions {
  /** `<stateDir>/sandbox-storage/<ownerId>`. */
  dir: string;
  uid: number;
  gid: number;
  log: Logger;
  helperPath?: string;
  mkfsPath?: string;
  mountPath?: string;
  umountPath?: string;
  /** Size of the sparse image; default: the size of the host file system holding `dir` (at least 1 GiB). */
  imageBytes?: number;
}

const SAFE_ID = /^[A-Za-z0-9_-]{1,100}$/;
/** Half-made subvolumes (`<id>.new-<hex>`) and a fork's old /tmp (`.trash-<hex>`) carry these marks. */
const PARTIAL = '.new-';
const TRASH = '.trash-';

export class BtrfsSandboxStorage {
  readonly image: string;
  readonly fsDir: string;
  readonly disksDir: string;
  readonly snapshotsDir: string;
  private readonly helper: BtrfsHelper;
  private ready: Promise<void> | null = null;
  private readonly cleanups = new Set<Promise<void>>();

  constructor(private readonly options: BtrfsStorageOptions) {
    this.image = path.join(options.dir, 'volume.btrfs');
    this.fsDir = path.join(options.dir, 'fs');
    this.disksDir = path.join(this.fsDir, 'disks');
    this.snapshotsDir = path.join(this.fsDir, 'snapshots');
    this.helper = new BtrfsHelper(options.helperPath);
  }

  /** Makes (first time) and mounts (when not mounted yet, e.g. by a predecessor killed with -9) the file system. */
  private ensure(): Promise<void> {
    this.ready ??= (async () => {
      // bwrap resolves the binds as the sandbox's uid: the way to a sandbox's work dir is searchable (0711), never
      // listable; the snapshots only root reads.
      await fs.promises.mkdir(this.options.dir, { recursive: true, mode: 0o711 });
      for (const dir of [path.dirname(this.options.dir), this.options.dir]) await fs.promises.chmod(dir, 0o711);
      if (!mountsUnder(this.options.dir).includes(this.fsDir)) {
        if (!fs.existsSync(this.image)) await this.makeImage();
        await fs.promises.mkdir(this.fsDir, { recursive: true, mode: 0o711 });
        await runMount(this.options.mountPath, ['-t', 'btrfs', '-o', 'loop,nosuid,nodev,noatime,nobarrier', this.image, this.fsDir]);
      }
      await this.helper.enableQuota(this.fsDir);
      for (const [dir, mode] of [[this.fsDir, 0o711], [this.disksDir, 0o711], [this.snapshotsDir, 0o700]] as const) {
        await fs.promises.mkdir(dir, { recursive: true, mode });
        await fs.promises.chmod(dir, mode);
      }
    })().catch((err: unknown) => {
      this.ready = null;
      throw new KindlingError('EXECUTOR_FAILED', `could not mount the sandboxes' file system: ${(err as Error).message}`, { cause: err });
    });
    return this.ready;
  }

  private async makeImage(): Promise<void> {
    let bytes = this.options.imageBytes;
    if (bytes === undefined) {
      const stat = await fs.promises.statfs(this.options.dir);
      bytes = Math.max(stat.blocks * stat.bsize, 1024 ** 3);
    }
    const fresh = `${this.image}.${randomBytes(3).toString('hex')}.new`;
    try {
      const handle = await fs.promises.open(fresh, 'wx', 0o600);
      await handle.truncate(bytes);
      await handle.close();
      // -K: no discard of a sparse file; single data and metadata: one device, no duplicates to write.
      await execFileAsync(this.options.mkfsPath ?? '/usr/sbin/mkfs.btrfs', ['-q', '-K', '-m', 'single', '-d', 'single', '-L', 'kindling-sandboxes', fresh], { env: {} });
      await fs.promises.rename(fresh, this.image);
    } catch (err) {
      await fs.promises.rm(fresh, { force: true });
      throw err;
    }
  }

  diskPath(sandboxId: string): string {
    return path.join(this.disksDir, safe(sandboxId));
  }

  layerPath(snapshotId: string): string {
    return path.join(this.snapshotsDir, safe(snapshotId));
  }

  /**
   * The sandbox's subvolume (made first when it does not exist: empty, or a writable snapshot of `lowerSnapshot`),
   * with its size limit. Nothing is mounted per sandbox: bwrap binds its work/ and tmp/.
   */
  async attach(sandboxId: string, diskMb: number, lowerSnapshot: string | null, _mountsDir?: string): Promise<Volume> {
    const sub = this.diskPath(sandboxId);
    const lower = lowerSnapshot === null ? null : this.layerPath(lowerSnapshot);
    await this.ensure();
    if (!(await exists(sub))) {
      if (lower !== null && !(await exists(lower))) {
        throw new KindlingError('SNAPSHOT_NOT_FOUND', `snapshot ${lowerSnapshot} has no files on this server`, { details: { snapshot: lowerSnapshot } });
      }
      const name = `${safe(sandboxId)}${PARTIAL}${randomBytes(3).toString('hex')}`;
      const partial = path.join(this.disksDir, name);
      let made = false;
      try {
        if (lower !== null) {
          await this.helper.snapshot(lower, this.disksDir, name, false);
          made = true;
          // The snapshot's /tmp is not the fork's: moved aside (O(1)) and removed in the background.
          const trash = path.join(partial, `${TRASH}${randomBytes(3).toString('hex')}`);
          await fs.promises.rename(path.join(partial, 'tmp'), trash);
          this.cleanup(fs.promises.rm(trash, { recursive: true, force: true }));
        } else {
          await this.helper.subvolume(this.disksDir, name);
          made = true;
          await fs.promises.chmod(partial, 0o711);
          await fs.promises.mkdir(path.join(partial, 'work'), { mode: 0o755 });
          await fs.promises.chown(path.join(partial, 'work'), this.options.uid, this.options.gid);
        }
        await fs.promises.mkdir(path.join(partial, 'tmp'), { mode: 0o1777 });
        await fs.promises.chmod(path.join(partial, 'tmp'), 0o1777);
        await this.helper.limit(partial, diskMb * 1024 * 1024);
        await fs.promises.rename(partial, sub);
      } catch (err) {
        if (made) await this.helper.delete(this.disksDir, name).catch(() => {});
        throw new KindlingError('EXECUTOR_FAILED', `could not make the sandbox's disk: ${(err as Error).message}`, { cause: err });
      }
    }
    return { work: path.join(sub, 'work'), tmp: path.join(sub, 'tmp'), detach: () => Promise.resolve() };
  }

  /**
   * A pooled sandbox's subvolume (made by `attach` under the pool's id, never used by a tenant) becomes `sandboxId`'s:
   * renamed (a running sandbox keeps its binds: they follow the directory, not its name) and limited to `diskMb`.
   */
  async adopt(poolId: string, sandboxId: string, diskMb: number): Promise<Volume> {
    const from = this.diskPath(poolId);
    const to = this.diskPath(sandboxId);
    if (await exists(to)) throw new KindlingError('EXECUTOR_FAILED', `sandbox ${sandboxId} has a disk already`);
    try {
      await this.helper.limit(from, diskMb * 1024 * 1024);
      await fs.promises.rename(from, to);
    } catch (err) {
      throw new KindlingError('EXECUTOR_FAILED', `could not take a pooled sandbox's disk: ${(err as Error).message}`, { cause: err });
    }
    return { work: path.join(to, 'work'), tmp: path.join(to, 'tmp'), detach: () => Promise.resolve() };
  }

  /** A read-only snapshot of the sandbox's subvolume (the sandbox frozen by the caller); resolves with its work dir's size. */
  async snapshot(volume: Volume, snapshotId: string): Promise<number> {
    const sub = path.dirname(volume.work);
    try {
      await this.ensure();
      await this.helper.snapshot(sub, this.snapshotsDir, safe(snapshotId), true);
    } catch (err) {
      if (err instanceof KindlingError && err.code === 'VALIDATION_FAILED') throw err;
      throw new KindlingError('EXECUTOR_FAILED', `could not snapshot the sandbox's files: ${(err as Error).message}`, { cause: err });
    }
    return sizeOf(path.join(this.layerPath(snapshotId), 'work'));
  }

  async removeDisk(sandboxId: string): Promise<void> {
    await this.removeSubvolume(this.disksDir, safe(sandboxId));
  }

  async removeSnapshot(snapshotId: string): Promise<void> {
    await this.removeSubvolume(this.snapshotsDir, safe(snapshotId));
  }

  /** Removes subvolumes whose ids are not kept (their records are gone), half-made ones and leftover trash. */
  async reap(keepSandboxes: ReadonlySet<string>, keepSnapshots: ReadonlySet<string>): Promise<number> {
    // No file system yet: nothing to reap (and none is made for it).
    if (!fs.existsSync(this.image)) return 0;
    await this.ensure();
    let removed = 0;
    for (const [dir, keep, what] of [[this.disksDir, keepSandboxes, 'disk'], [this.snapshotsDir, keepSnapshots, 'snapshot']] as const) {
      for (const name of await fs.promises.readdir(dir)) {
        if (keep.has(name)) {
          if (dir === this.disksDir) {
            for (const entry of await fs.promises.readdir(path.join(dir, name)).catch(() => [] as string[])) {
              if (entry.startsWith(TRASH)) await fs.promises.rm(path.join(dir, name, entry), { recursive: true, force: true });
            }
          }
          continue;
        }
        await this.removeSubvolume(dir, name);
        this.options.log.info({ [what]: name }, `removed the files of a deleted ${what === 'disk' ? 'sandbox' : 'snapshot'}`);
        removed++;
      }
    }
    return removed;
  }

  /** Ends the helper and unmounts the file system (lazily when a sandbox still uses it); the image stays. */
  async closePool(): Promise<void> {
    await Promise.all([...this.cleanups]);
    this.helper.close();
    if (this.ready === null) return;
    const ready = this.ready;
    this.ready = null;
    if (!(await ready.then(() => true, () => false))) return;
    const umount = this.options.umountPath ?? '/usr/bin/umount';
    try {
      await execFileAsync(umount, [this.fsDir], { env: {} });
    } catch {
      await execFileAsync(umount, ['-l', this.fsDir], { env: {} }).catch(() => {});
    }
  }

  private async removeSubvolume(dir: string, name: string): Promise<void> {
    if (!fs.existsSync(this.image)) return;
    await this.ensure();
    if (!(await exists(path.join(dir, name)))) return;
    try {
      await this.helper.delete(dir, name);
    } catch (err) {
      throw new KindlingError('EXECUTOR_FAILED', `could not remove ${name}: ${(err as Error).message}`, { cause: err });
    }
  }

  private cleanup(work: Promise<unknown>): void {
    const done = work.then(
      () => undefined,
      (err: unknown) => this.options.log.warn({ err }, 'could not remove a fork\'s old /tmp'),
    );
    this.cleanups.add(done);
    void done.finally(() => this.cleanups.delete(done));
  }
}

/**
 * Whether a path exists, asked off the event loop: a lookup in the disks or layers directory waits while a snapshot
 * or subvolume is being made there (the directory is locked through its transaction commit), which took 4 ms of the
 * event loop per check with a fork of 100 under way.
 */
export function exists(file: string): Promise<boolean> {
  return fs.promises.access(file).then(
    () => true,
    () => false,
  );
}

function safe(id: string): string {
  if (!SAFE_ID.test(id)) throw new KindlingError('VALIDATION_FAILED', `bad id "${id.slice(0, 100)}"`, { details: { field: 'id' } });
  return id;
}

async function sizeOf(dir: string): Promise<number> {
  const { stdout } = await execFileAsync('/usr/bin/du', ['-s', '-B1', '--apparent-size', '--', dir], { env: {} });
  return Number(stdout.split(/\s/)[0]);
}

/** Whether this host can keep sandboxes on btrfs: the kernel knows it, mkfs.btrfs and the helper exist. */
export function btrfsStorageProblem(options: { helperPath: string; mkfsPath?: string }): string | null {
  let filesystems = '';
  try {
    filesystems = fs.readFileSync('/proc/filesystems', 'utf8');
  } catch {
    // not Linux
  }
  if (!/\bbtrfs\b/.test(filesystems)) return 'the kernel has no btrfs';
  if (!fs.existsSync(options.mkfsPath ?? '/usr/sbin/mkfs.btrfs')) return 'mkfs.btrfs is not installed (btrfs-progs)';
  if (!fs.existsSync(options.helperPath)) return 'the native helper kindling-btrfs is not built (scripts/build-native.sh)';
  return null;
}
