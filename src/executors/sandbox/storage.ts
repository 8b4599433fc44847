/**
 * Files of persistent sandboxes that outlive their processes and the server: a disk per sandbox, and snapshots. This
 * is the ext4 design. The sandbox executor uses it where the host has no btrfs (kernel, mkfs.btrfs, the helper
 * kindling-btrfs) or when asked for (`diskBackend: 'ext4'`); its default is storage-btrfs.ts, whose snapshots and forks
 * copy nothing and whose creates mount nothing (a subvolume each, on one file system per owner). What both promise: files survive a kill -9 of the
 * server, the size limit is the kernel's, nothing of the host is reachable, reaping at start-up, immutable snapshots,
 * snapshot bytes reported for quotas.
 *
 * The disk: a sparse ext4 image of `diskMb` (`<stateDir>/sandbox-storage/<ownerId>/disks/<sandbox id>.ext4`, root
 * 0600), loop-mounted (nosuid, nodev) under the executor's private mounts while the sandbox runs. The kernel enforces
 * its size: a full disk is ENOSPC in the writing process, never the host's disk filling up. Measured here: mkfs.ext4
 * of a sparse image 20 ms (16 MiB or 1 GiB alike), loop mount 20-30 ms, unmount 10 ms; the host's file system has no
 * project quotas, and an overlay upper on the host disk with a size check would only notice after the fact. No
 * journal: the server dying does not unmount the file system (the kernel keeps it and its page cache), so the files
 * survive a kill -9 of the server; a journal would only matter for a crash of the host, and costs MiBs of small disks.
 *
 * Inside the image: `upper/` and `ovl/` (overlayfs upper and work dirs), `tmp/` (the sandbox's /tmp) and `empty/`.
 * The sandbox's /work is an overlay: lower = the snapshot it was made from (read-only, shared by every sandbox made
 * from it: nothing is copied) or `empty/`, upper = `upper/`. The overlay's options name its layers as
 * /proc/self/fd/N of the mount process, so mountinfo inside the sandbox names no host path.
 *
 * A snapshot: the sandbox's /work as seen through its overlay (lower + upper merged), copied with `cp -a` into
 * `snapshots/<snapshot id>/layer` (root 0700; links are copied as links, never followed) while the sandbox is frozen,
 * and from then on only ever mounted as a read-only lower layer. /tmp is not part of a snapshot.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { KindlingError } from '../../core/errors.js';
import type { Logger } from '../shared/logger.js';
import { runMount } from './private-mounts.js';

const execFileAsync = promisify(execFile);

export interface SandboxStorageOptions {
  /** `<stateDir>/sandbox-storage/<ownerId>`. */
  dir: string;
  uid: number;
  gid: number;
  log: Logger;
  mkfsPath?: string;
  mountPath?: string;
  umountPath?: string;
  cpPath?: string;
}

/** A sandbox's disk, mounted: what bwrap binds read-write, and how to unmount it. */
export interface Volume {
  /** The overlay to bind at the sandbox's work dir. */
  work: string;
  /** The directory to bind at /tmp. */
  tmp: string;
  detach(): Promise<void>;
}

const SAFE_ID = /^[A-Za-z0-9_-]{1,100}$/;

/* -- pre-formatted disks (sbx-parity) -------------------------------------------------------------------------------
 * mkfs.ext4 is off the create path: `pool/` keeps up to POOL_PER_SIZE freshly formatted, never mounted images per
 * disk size (of at most POOL_SIZES sizes, the ones asked for most recently); a create takes one with a rename (same
 * file system) and the pool is refilled in the background. A size not pooled yet is made on the spot as before (and
 * pooled from then on). The pool is emptied at start-up (`reap`): its images hold nothing but an empty file system. */
const POOL_PER_SIZE = 2;
const POOL_SIZES = 4;

export class SandboxStorage {
  readonly disksDir: string;
  readonly snapshotsDir: string;
  /** Pre-formatted images, per disk size in MiB (sbx-parity). */
  readonly poolDir: string;
  private readonly pool = new Map<number, string[]>();
  private readonly filling = new Set<number>();
  private readonly fills = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly options: SandboxStorageOptions) {
    this.disksDir = path.join(options.dir, 'disks');
    this.snapshotsDir = path.join(options.dir, 'snapshots');
    this.poolDir = path.join(options.dir, 'pool');
  }

  /* -- pre-formatted disks (sbx-parity) ---------------------------------------------------------------------------- */

  /** A sparse image of `diskMb` formatted as the sandbox's ext4 disk, at `file` (made with O_EXCL, 0600). */
  private async format(file: string, diskMb: number, background = false): Promise<void> {
    const handle = await fs.promises.open(file, 'wx', 0o600);
    await handle.truncate(Math.round(diskMb * 1024 * 1024));
    await handle.close();
    // Tiny disks (a few MiB) get 1 KiB blocks; root owns the root dir, the sandbox uid owns upper/ and tmp/.
    const mkfs = [this.options.mkfsPath ?? '/usr/sbin/mkfs.ext4', '-q', '-F', '-m', '0', '-O', '^has_journal', '-E', 'lazy_itable_init=1,root_owner=0:0', '-L', 'kindling-disk', file];
    // A background format dies with the server (a kill -9 leaves no mkfs running on): setpriv's parent-death signal.
    const [command, ...args] = background ? ['/usr/bin/setpriv', '--pdeathsig=KILL', '--', ...mkfs] : mkfs;
    await execFileAsync(command!, args, { env: {} });
  }

  /** Moves a pooled image of `diskMb` to `disk`; false when none is pooled. */
  private async takePooled(diskMb: number, disk: string): Promise<boolean> {
    const images = this.pool.get(diskMb);
    const image = images?.pop();
    if (image === undefined) return false;
    try {
      await fs.promises.rename(image, disk);
      return true;
    } catch (err) {
      this.options.log.warn({ err, image }, 'a pre-formatted disk could not be taken; formatting one');
      return false;
    }
  }

  /** Tops the pool of `diskMb` up to POOL_PER_SIZE images, one at a time, in the background. */
  private refill(diskMb: number): void {
    if (this.closed || this.filling.has(diskMb)) return;
    if (!this.pool.has(diskMb)) {
      if (this.pool.size >= POOL_SIZES) {
        // The size asked for least recently (Map order: insertion; refreshed below) leaves the pool.
        const [oldest, images] = this.pool.entries().next().value as [number, string[]];
        this.pool.delete(oldest);
        for (const image of images) void fs.promises.rm(image, { force: true });
      }
      this.pool.set(diskMb, []);
    } else {
      const images = this.pool.get(diskMb)!;
      this.pool.delete(diskMb);
      this.pool.set(diskMb, images);
    }
    this.filling.add(diskMb);
    const fill = (async () => {
      try {
        await fs.promises.mkdir(this.poolDir, { recursive: true, mode: 0o700 });
        for (;;) {
          const images = this.pool.get(diskMb);
          if (this.closed || images === undefined || images.length >= POOL_PER_SIZE) return;
          const image = path.join(this.poolDir, `${diskMb}-${randomBytes(4).toString('hex')}.ext4`);
          try {
            await this.format(image, diskMb, true);
          } catch (err) {
            await fs.promises.rm(image, { force: true });
            this.options.log.warn({ err, diskMb }, 'could not pre-format a sandbox disk');
            return;
          }
          if (this.closed || this.pool.get(diskMb) !== images) await fs.promises.rm(image, { force: true });
          else images.push(image);
        }
      } finally {
        this.filling.delete(diskMb);
      }
    })().catch((err: unknown) => this.options.log.warn({ err, diskMb }, 'could not pre-format a sandbox disk'));
    this.fills.add(fill);
    void fill.finally(() => this.fills.delete(fill));
  }

  /** Stops refilling and removes the pooled images (the executor's close). */
  async closePool(): Promise<void> {
    this.closed = true;
    // A format under way ends (its image removed) before the executor's close resolves: no mkfs outlives it.
    await Promise.all([...this.fills]);
    const images = [...this.pool.values()].flat();
    this.pool.clear();
    for (const image of images) await fs.promises.rm(image, { force: true });
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

  diskPath(sandboxId: string): string {
    return path.join(this.disksDir, `${safe(sandboxId)}.ext4`);
  }

  layerPath(snapshotId: string): string {
    return path.join(this.snapshotsDir, safe(snapshotId), 'layer');
  }

  /**
   * Mounts the sandbox's disk (made first when it does not exist) under `mountsDir`, with `lowerSnapshot`'s layer
   * under its /work. A failure half-way unmounts what was mounted (and removes a disk it made) before rethrowing.
   */
  async attach(sandboxId: string, diskMb: number, lowerSnapshot: string | null, mountsDir: string): Promise<Volume> {
    const disk = this.diskPath(sandboxId);
    const lower = lowerSnapshot === null ? null : this.layerPath(lowerSnapshot);
    if (lower !== null && !fs.existsSync(lower)) {
      throw new KindlingError('SNAPSHOT_NOT_FOUND', `snapshot ${lowerSnapshot} has no files on this server`, { details: { snapshot: lowerSnapshot } });
    }
    await fs.promises.mkdir(this.disksDir, { recursive: true, mode: 0o700 });
    let made = false;
    if (!fs.existsSync(disk)) {
      const fresh = `${disk}.${randomBytes(3).toString('hex')}.new`;
      try {
        if (!(await this.takePooled(diskMb, disk))) {
          await this.format(fresh, diskMb);
          await fs.promises.rename(fresh, disk);
        }
        made = true;
      } catch (err) {
        await fs.promises.rm(fresh, { force: true });
        throw new KindlingError('EXECUTOR_FAILED', `could not make the sandbox's disk: ${(err as Error).message}`, { cause: err });
      } finally {
        this.refill(diskMb);
      }
    }
    const base = path.join(mountsDir, `${safe(sandboxId)}-${randomBytes(2).toString('hex')}`);
    const mnt = path.join(base, 'disk');
    const work = path.join(base, 'work');
    const mounted: string[] = [];
    try {
      await fs.promises.mkdir(mnt, { recursive: true, mode: 0o711 });
      await fs.promises.mkdir(work, { mode: 0o711 });
      await fs.promises.chmod(base, 0o711);
      await this.mount(['-t', 'ext4', '-o', 'loop,nosuid,nodev,noatime', disk, mnt]);
      mounted.push(mnt);
      await fs.promises.chmod(mnt, 0o711);
      const { uid, gid } = this.options;
      for (const [name, mode, owner] of [['upper', 0o755, uid], ['ovl', 0o700, 0], ['tmp', 0o1777, 0], ['empty', 0o755, 0]] as const) {
        const dir = path.join(mnt, name);
        if (!fs.existsSync(dir)) {
          await fs.promises.mkdir(dir, { mode });
          await fs.promises.chown(dir, owner, owner === 0 ? 0 : gid);
          await fs.promises.chmod(dir, mode);
        }
      }
      const layers = [fs.openSync(lower ?? path.join(mnt, 'empty'), 'r'), fs.openSync(path.join(mnt, 'upper'), 'r'), fs.openSync(path.join(mnt, 'ovl'), 'r')];
      try {
        await this.mount(['-t', 'overlay', '-o', 'nosuid,nodev,lowerdir=/proc/self/fd/3,upperdir=/proc/self/fd/4,workdir=/proc/self/fd/5', 'kindling-work', work], layers);
      } finally {
        for (const fd of layers) fs.closeSync(fd);
      }
      mounted.push(work);
    } catch (err) {
      for (const point of mounted.reverse()) await this.unmount(point);
      await fs.promises.rm(base, { recursive: true, force: true }).catch(() => {});
      if (made) await fs.promises.rm(disk, { force: true }).catch(() => {});
      if (err instanceof KindlingError) throw err;
      throw new KindlingError('EXECUTOR_FAILED', `could not mount the sandbox's disk: ${(err as Error).message}`, { cause: err });
    }
    let detached: Promise<void> | null = null;
    return {
      work,
      tmp: path.join(mnt, 'tmp'),
      detach: () =>
        (detached ??= (async () => {
          await this.unmount(work);
          await this.unmount(mnt);
          await fs.promises.rm(base, { recursive: true, force: true }).catch(() => {});
        })()),
    };
  }

  /** Copies the merged /work of a mounted volume into a new snapshot's layer; returns its size in bytes. */
  async snapshot(volume: Volume, snapshotId: string): Promise<number> {
    const dir = path.join(this.snapshotsDir, safe(snapshotId));
    const partial = `${dir}.${randomBytes(3).toString('hex')}.partial`;
    await fs.promises.mkdir(this.snapshotsDir, { recursive: true, mode: 0o700 });
    try {
      await fs.promises.mkdir(partial, { mode: 0o700 });
      await execFileAsync(this.options.cpPath ?? '/usr/bin/cp', ['-a', '--no-dereference', '--', volume.work, path.join(partial, 'layer')], { env: {}, maxBuffer: 1024 * 1024 });
      const bytes = await sizeOf(path.join(partial, 'layer'));
      await fs.promises.rename(partial, dir);
      return bytes;
    } catch (err) {
      await fs.promises.rm(partial, { recursive: true, force: true }).catch(() => {});
      throw new KindlingError('EXECUTOR_FAILED', `could not snapshot the sandbox's files: ${(err as Error).message}`, { cause: err });
    }
  }

  async removeDisk(sandboxId: string): Promise<void> {
    await fs.promises.rm(this.diskPath(sandboxId), { force: true });
  }

  async removeSnapshot(snapshotId: string): Promise<void> {
    await fs.promises.rm(path.join(this.snapshotsDir, safe(snapshotId)), { recursive: true, force: true });
  }

  /** Removes disks and snapshots whose ids are not kept (their records are gone), and half-made ones. */
  async reap(keepSandboxes: ReadonlySet<string>, keepSnapshots: ReadonlySet<string>): Promise<number> {
    let removed = 0;
    // Pre-formatted images of a previous run (sbx-parity): not counted, nothing of a sandbox's is in them.
    const pooled = new Set([...this.pool.values()].flat());
    for (const name of await readdirOrEmpty(this.poolDir)) {
      if (!pooled.has(path.join(this.poolDir, name))) await fs.promises.rm(path.join(this.poolDir, name), { force: true });
    }
    for (const name of await readdirOrEmpty(this.disksDir)) {
      const id = name.endsWith('.ext4') ? name.slice(0, -'.ext4'.length) : null;
      if (id !== null && keepSandboxes.has(id)) continue;
      await fs.promises.rm(path.join(this.disksDir, name), { force: true });
      this.options.log.info({ disk: name }, 'removed the disk of a deleted sandbox');
      removed++;
    }
    for (const name of await readdirOrEmpty(this.snapshotsDir)) {
      if (keepSnapshots.has(name)) continue;
      await fs.promises.rm(path.join(this.snapshotsDir, name), { recursive: true, force: true });
      this.options.log.info({ snapshot: name }, 'removed the files of a deleted snapshot');
      removed++;
    }
    return removed;
  }

  private mount(args: string[], fds: number[] = []): Promise<void> {
    return runMount(this.options.mountPath, args, fds);
  }

  /** Unmounts (lazily when still busy: the loop device is released once its last user is gone). */
  private async unmount(point: string): Promise<void> {
    const umount = this.options.umountPath ?? '/usr/bin/umount';
    try {
      await execFileAsync(umount, [point], { env: {} });
    } catch {
      await execFileAsync(umount, ['-l', point], { env: {} }).catch(() => {});
    }
  }
}

function safe(id: string): string {
  if (!SAFE_ID.test(id)) throw new KindlingError('VALIDATION_FAILED', `bad id "${id.slice(0, 100)}"`, { details: { field: 'id' } });
  return id;
}

async function sizeOf(dir: string): Promise<number> {
  const { stdout } = await execFileAsync('/usr/bin/du', ['-s', '-B1', '--apparent-size', '--', dir], { env: {} });
  return Number(stdout.split(/\s/)[0]);
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.promises.readdir(dir);
  } catch {
    return [];
  }
}
