/**
 * Files (and hibernated memory) of persistent sandboxes on the microvm executor, kept on the host's disk until removed:
 *
 *   <dir>/disks/<sandbox id>.qcow2      the sandbox's data disk: an ext4 (label kindling-data, dirs work/ and tmp/)
 *                                       the guest agent mounts at the work dir and /tmp. QEMU enforces its size: a
 *                                       full disk is ENOSPC in the guest, never the host filling up. A restart of the
 *                                       sandbox (after the VM ended) attaches the same file.
 *   <dir>/disks/<sandbox id>.vmstate    a hibernated VM: its memory and device state (QMP migrate to a file), and
 *   <dir>/disks/<sandbox id>.json       what the VM looked like (shape, agent stream ids), to start it identically
 *   <dir>/snapshots/<snapshot id>.qcow2 a snapshot: the disk at one moment (the VM stopped), flattened into a
 *                                       standalone qcow2 (`qemu-img convert`: only the allocated clusters are
 *                                       copied), mode 0444, never written again
 *   <dir>/snapshots/<snapshot id>.vmstate the VM's memory and devices at that same moment (QMP migrate to a file), and
 *   <dir>/snapshots/<snapshot id>.json    its shape and agent stream ids: a memory snapshot. Every sandbox made from
 *                                       it starts with `-incoming` from this file (read, never written: shared)
 *
 * A disk made from a snapshot is a qcow2 overlay whose backing file is the snapshot: made in O(1) whatever the
 * snapshot's size, and every sandbox made from one snapshot shares it (copy-on-write: only their changes are theirs).
 * Removing a snapshot that disks still use breaks those disks (they cannot start again); the orchestrator decides.
 * A fresh disk is an ext4 made by the host's mkfs.ext4 on a sparse raw file, converted to qcow2 (a few ms, ~1 MiB).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { KindlingError } from '../../core/errors.js';
import type { SandboxStorageOps } from '../executor.js';
import type { Logger } from '../shared/logger.js';

const execFileAsync = promisify(execFile);
const SAFE_ID = /^[A-Za-z0-9_-]{1,100}$/;
/** The uid/gid the sandbox's commands run as (the data disk's work/ belongs to it). */
const NOBODY = 65534;

export interface MicroVmStorageOptions {
  /** `<stateDir>/microvm/sandboxes/<ownerId>`. */
  dir: string;
  qemuImgBinary: string;
  mkfsBinary?: string;
  log: Logger;
  /** Called when a sandbox's hibernation image is removed (restored, or the sandbox deleted). */
  onHibernationDropped?: (sandboxId: string) => void;
}

/** What a hibernated VM needs to be started again exactly as it was. */
export interface HibernationRecord {
  image: string;
  vcpus: number;
  memoryMb: number;
  /** The agent client's next stream id when the VM was saved; a restored client starts above it. */
  streamsUsed: number;
  savedAt: string;
  /** What the saved state depends on (machineKey(): kernel, agent, root image, shape); absent in older records. */
  machine?: string;
  /** The sandbox's limits, set in the guest when it was made and saved with it (memory snapshots: forks keep them). */
  limits?: { memoryMb: number; cpus: number; pids: number; diskMb: number };
}

export class MicroVmSandboxStorage implements SandboxStorageOps {
  constructor(private readonly options: MicroVmStorageOptions) {}

  private get disksDir(): string {
    return path.join(this.options.dir, 'disks');
  }

  private get snapshotsDir(): string {
    return path.join(this.options.dir, 'snapshots');
  }

  diskPath(sandboxId: string): string {
    return path.join(this.disksDir, `${safe(sandboxId)}.qcow2`);
  }

  memoryPath(sandboxId: string): string {
    return path.join(this.disksDir, `${safe(sandboxId)}.vmstate`);
  }

  private recordPath(sandboxId: string): string {
    return path.join(this.disksDir, `${safe(sandboxId)}.json`);
  }

  snapshotPath(snapshotId: string): string {
    return path.join(this.snapshotsDir, `${safe(snapshotId)}.qcow2`);
  }

  /** The memory image of a memory snapshot (see snapshotMemory()). */
  snapshotMemoryPath(snapshotId: string): string {
    return path.join(this.snapshotsDir, `${safe(snapshotId)}.vmstate`);
  }

  private snapshotRecordPath(snapshotId: string): string {
    return path.join(this.snapshotsDir, `${safe(snapshotId)}.json`);
  }

  /**
   * Saves the memory half of snapshot `snapshotId`: `save(file)` writes the VM's state into a partial file, renamed
   * into place once complete, then the record. Resolves with the image's size. A failure leaves no memory half.
   */
  async saveSnapshotMemory(snapshotId: string, record: Omit<HibernationRecord, 'savedAt'>, save: (file: string) => Promise<void>): Promise<number> {
    await fs.promises.mkdir(this.snapshotsDir, { recursive: true, mode: 0o700 });
    const file = this.snapshotMemoryPath(snapshotId);
    const partial = `${file}.${randomBytes(4).toString('hex')}.partial`;
    const recordFile = this.snapshotRecordPath(snapshotId);
    try {
      await save(partial);
      await fs.promises.chmod(partial, 0o444);
      await fs.promises.rename(partial, file);
      await fs.promises.writeFile(`${recordFile}.partial`, JSON.stringify({ ...record, savedAt: new Date().toISOString() }));
      await fs.promises.rename(`${recordFile}.partial`, recordFile);
      return (await fs.promises.stat(file)).size;
    } catch (error) {
      await fs.promises.rm(partial, { force: true }).catch(() => {});
      await fs.promises.rm(file, { force: true }).catch(() => {});
      await fs.promises.rm(`${recordFile}.partial`, { force: true }).catch(() => {});
      throw error;
    }
  }

  /** The memory half of snapshot `snapshotId`, or null for a snapshot of the files only. */
  snapshotMemory(snapshotId: string): Promise<HibernationRecord | null> {
    return savedState(this.snapshotRecordPath(snapshotId), this.snapshotMemoryPath(snapshotId));
  }

  /** The sandbox's disk: the existing one (a restart), else a new one (empty, or an overlay on `fromSnapshot`). */
  async attach(sandboxId: string, diskMb: number, fromSnapshot: string | null): Promise<string> {
    const disk = this.diskPath(sandboxId);
    if (fs.existsSync(disk)) return disk;
    await fs.promises.mkdir(this.disksDir, { recursive: true, mode: 0o700 });
    const partial = `${disk}.${randomBytes(4).toString('hex')}.partial`;
    try {
      if (fromSnapshot !== null) {
        const backing = this.snapshotPath(fromSnapshot);
        if (!fs.existsSync(backing)) throw new KindlingError('SNAPSHOT_NOT_FOUND', `snapshot ${fromSnapshot} has no files on this server; list snapshots with GET /v1/snapshots`, { details: { snapshot: fromSnapshot } });
        // O(1): an overlay, the snapshot its read-only backing file (shared by every disk made from it).
        await this.qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, partial]);
      } else {
        await this.makeFileSystem(partial, diskMb);
      }
      await fs.promises.rename(partial, disk);
      return disk;
    } catch (error) {
      await fs.promises.rm(partial, { force: true }).catch(() => {});
      if (error instanceof KindlingError) throw error;
      throw new KindlingError('EXECUTOR_FAILED', `could not make the sandbox's disk: ${(error as Error).message}`, { cause: error });
    }
  }

  /** An ext4 of `diskMb` with work/ (the sandbox user's) and tmp/ (1777), as a qcow2 at `file`. */
  private async makeFileSystem(file: string, diskMb: number): Promise<void> {
    const stage = `${file}.d`;
    const raw = `${file}.raw`;
    try {
      await fs.promises.mkdir(path.join(stage, 'work'), { recursive: true });
      await fs.promises.mkdir(path.join(stage, 'tmp'));
      await fs.promises.chown(path.join(stage, 'work'), NOBODY, NOBODY);
      await fs.promises.chmod(path.join(stage, 'tmp'), 0o1777);
      await execFileAsync(this.options.mkfsBinary ?? '/usr/sbin/mkfs.ext4', ['-q', '-F', '-m', '0', '-b', '4096', '-L', 'kindling-data', '-E', 'root_owner=0:0', '-d', stage, raw, `${diskMb}M`]);
      await this.qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, file]);
    } finally {
      await fs.promises.rm(stage, { recursive: true, force: true }).catch(() => {});
      await fs.promises.rm(raw, { force: true }).catch(() => {});
    }
  }

  /**
   * Copies `disk` (its VM stopped, its guest's writes on it or in the saved memory: the caller's job) into the immutable snapshot `snapshotId`.
   * `-U`: the running QEMU holds the image's lock; the copy is consistent because the VM is stopped. Returns its size.
   */
  async snapshot(disk: string, snapshotId: string): Promise<number> {
    const file = this.snapshotPath(snapshotId);
    await fs.promises.mkdir(this.snapshotsDir, { recursive: true, mode: 0o700 });
    const partial = `${file}.${randomBytes(4).toString('hex')}.partial`;
    try {
      await this.qemuImg(['convert', '-q', '-U', '-f', 'qcow2', '-O', 'qcow2', disk, partial]);
      await fs.promises.chmod(partial, 0o444);
      await fs.promises.rename(partial, file);
      return (await fs.promises.stat(file)).size;
    } catch (error) {
      await fs.promises.rm(partial, { force: true }).catch(() => {});
      throw new KindlingError('EXECUTOR_FAILED', `could not snapshot the sandbox's disk: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Writes a hibernation record (after the memory file is complete). */
  async saveHibernation(sandboxId: string, record: HibernationRecord): Promise<void> {
    const file = this.recordPath(sandboxId);
    await fs.promises.writeFile(`${file}.partial`, JSON.stringify(record));
    await fs.promises.rename(`${file}.partial`, file);
  }

  /** The hibernated VM of `sandboxId`, or null when there is none (never saved, consumed by a restore, or removed). */
  hibernation(sandboxId: string): Promise<HibernationRecord | null> {
    return savedState(this.recordPath(sandboxId), this.memoryPath(sandboxId));
  }

  /** Forgets a hibernated VM (restored: its memory is in a VM again, and the disk has moved on from it). */
  async dropHibernation(sandboxId: string): Promise<void> {
    this.options.onHibernationDropped?.(sandboxId);
    await fs.promises.rm(this.recordPath(sandboxId), { force: true });
    await fs.promises.rm(this.memoryPath(sandboxId), { force: true });
  }

  async removeDisk(sandboxId: string): Promise<void> {
    await this.dropHibernation(sandboxId);
    await fs.promises.rm(this.diskPath(sandboxId), { force: true });
  }

  async removeSnapshot(snapshotId: string): Promise<void> {
    await fs.promises.rm(this.snapshotRecordPath(snapshotId), { force: true });
    await fs.promises.rm(this.snapshotMemoryPath(snapshotId), { force: true });
    await fs.promises.rm(this.snapshotPath(snapshotId), { force: true });
  }

  /** Removes disks, hibernation images and snapshots whose ids are not kept, and half-made files. */
  async reap(keepSandboxes: ReadonlySet<string>, keepSnapshots: ReadonlySet<string>): Promise<number> {
    let removed = 0;
    const sweep = async (dir: string, keep: ReadonlySet<string>, what: string): Promise<void> => {
      const gone = new Set<string>();
      for (const name of await readdirOrEmpty(dir)) {
        const id = /^([A-Za-z0-9_-]{1,100})\.(qcow2|vmstate|json)$/.exec(name)?.[1];
        if (id !== undefined && keep.has(id)) continue;
        await fs.promises.rm(path.join(dir, name), { recursive: true, force: true });
        if (id !== undefined && !gone.has(id)) {
          gone.add(id);
          this.options.log.info({ [what]: id }, `removed the files of a deleted ${what}`);
        }
      }
      removed += gone.size;
    };
    await sweep(this.disksDir, keepSandboxes, 'sandbox');
    await sweep(this.snapshotsDir, keepSnapshots, 'snapshot');
    return removed;
  }

  private async qemuImg(args: string[]): Promise<void> {
    await execFileAsync(this.options.qemuImgBinary, args);
  }
}

/** A saved VM's record, when both it and its memory file are there (a record is written only after its memory file). */
async function savedState(recordFile: string, memoryFile: string): Promise<HibernationRecord | null> {
  try {
    const record = JSON.parse(await fs.promises.readFile(recordFile, 'utf8')) as HibernationRecord;
    return fs.existsSync(memoryFile) ? record : null;
  } catch {
    return null;
  }
}

function safe(id: string): string {
  if (!SAFE_ID.test(id)) throw new KindlingError('VALIDATION_FAILED', `bad id "${id.slice(0, 100)}"`, { details: { field: 'id' } });
  return id;
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.promises.readdir(dir);
  } catch {
    return [];
  }
}
