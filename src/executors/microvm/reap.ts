/**
 * Cleanup of what microVMs leave behind after a crash, for both drivers: VM directories (with their vm.json naming the
 * owner and the VMM's pid) and snapshot files that nobody has used for a while (their key changes whenever the kernel,
 * agent, image or shape changes, so old ones would otherwise pile up).
 */
import { existsSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { processAlive } from '../shared/process.js';
import type { VmRecord } from './qemu.js';

/**
 * Kills the VMM of every VM directory under `vmsDir` owned by `owner` (or without a readable record) that is not in
 * `keep`, and removes the directory. A pid is killed only when its command line names the directory (pids are reused).
 */
export async function reapVmDirs(vmsDir: string, owner: string, keep: ReadonlySet<string>): Promise<number> {
  let removed = 0;
  for (const entry of await fs.readdir(vmsDir).catch(() => [] as string[])) {
    const dir = path.join(vmsDir, entry);
    if (keep.has(dir)) continue;
    let record: (VmRecord & { rootDir?: string }) | null = null;
    try {
      record = JSON.parse(readFileSync(path.join(dir, 'vm.json'), 'utf8')) as VmRecord & { rootDir?: string };
    } catch {}
    if (record && record.owner !== owner) continue;
    if (!record) {
      // A VMM started while the server died before writing vm.json: found by its command line, which names the dir.
      for (const pid of pidsNaming(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
          await waitGone(pid);
        } catch {}
      }
    }
    if (record) {
      try {
        const cmdline = readFileSync(`/proc/${record.pid}/cmdline`, 'utf8');
        // qemu and firecracker name the directory (sockets in it); a jailed firecracker names the VM id, which ends
        // with the directory's (unique) name.
        if (cmdline.includes(dir) || cmdline.includes(path.basename(dir))) {
          process.kill(record.pid, 'SIGKILL');
          await waitGone(record.pid);
        }
      } catch {}
      // A jailed VM's chroot lives outside the VM dir.
      if (record.rootDir && record.rootDir !== dir) await fs.rm(path.dirname(record.rootDir), { recursive: true, force: true });
    }
    await fs.rm(dir, { recursive: true, force: true });
    removed++;
  }
  return removed;
}

/** Processes whose command line holds `dir` as a whole path (`dir` itself or a path under it). */
function pidsNaming(dir: string): number[] {
  const found: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args.some((arg) => arg === dir || arg.includes(`${dir}/`) || arg.endsWith(`=${dir}`))) found.push(Number(entry));
    } catch {}
  }
  return found;
}

async function waitGone(pid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/\) Z /.test(stat)) return; // a zombie of ours: it is dead
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Removes snapshot files under `snapshotsDir` not used (mtime: the executor touches a snapshot each time it restores
 * from it, and a bind disk each time a run asks for it) for `maxAgeMs`, except those in use, and half-written
 * `*.<pid>.tmp` files whose writer is gone. Returns the files removed.
 *
 * Safe while the executor runs: the last look at a file (in use? touched since?) and its rename out of the way happen
 * in one synchronous step, so a user either touched or claimed it before (and it stays) or finds it gone after (and
 * makes it anew). Only then is it deleted, off the event loop.
 */
export async function reapSnapshots(snapshotsDir: string, maxAgeMs: number, inUse: ReadonlySet<string> | ((file: string) => boolean), now = Date.now()): Promise<string[]> {
  const used = typeof inUse === 'function' ? inUse : (file: string): boolean => inUse.has(file);
  const removed: string[] = [];
  for (const entry of await fs.readdir(snapshotsDir).catch(() => [] as string[])) {
    const file = path.join(snapshotsDir, entry);
    if (entry.endsWith('.reaped')) {
      await fs.rm(file, { force: true });
      continue;
    }
    const tmp = /\.(\d+)\.tmp(\.mem)?$/.exec(entry);
    if (tmp) {
      if (processAlive(Number(tmp[1]))) continue;
      await fs.rm(file, { force: true });
      removed.push(file);
      continue;
    }
    // A Firecracker snapshot's memory file ages with its state file (the one touched on restore) while that exists.
    const base = file.replace(/\.mem$/, '');
    const stat = (await fs.stat(base).catch(() => null)) ?? (await fs.stat(file).catch(() => null));
    if (!stat || now - stat.mtimeMs <= maxAgeMs) continue;
    if (await removeUnused(file, base, used, (mtimeMs) => now - mtimeMs > maxAgeMs)) removed.push(file);
  }
  return removed;
}

/**
 * Removes the least recently used snapshots under `snapshotsDir` (a `.vmstate` file and its `.mem`) beyond the
 * `maxCount` newest, except those in use: snapshots are a cache, and without a bound every function's first call
 * would leave one for a day. Returns the files removed.
 */
export async function trimSnapshots(snapshotsDir: string, maxCount: number, inUse: (file: string) => boolean): Promise<string[]> {
  const states: { file: string; mtimeMs: number }[] = [];
  for (const entry of await fs.readdir(snapshotsDir).catch(() => [] as string[])) {
    if (!entry.endsWith('.vmstate')) continue;
    const file = path.join(snapshotsDir, entry);
    const stat = await fs.stat(file).catch(() => null);
    if (stat) states.push({ file, mtimeMs: stat.mtimeMs });
  }
  if (states.length <= maxCount) return [];
  states.sort((a, b) => b.mtimeMs - a.mtimeMs);
  const removed: string[] = [];
  for (const { file, mtimeMs } of states.slice(maxCount)) {
    // Still not used since it was listed (a restore touches it).
    if (!(await removeUnused(file, file, inUse, (currentMtimeMs) => currentMtimeMs <= mtimeMs))) continue;
    removed.push(file);
    await fs.rm(`${file}.mem`, { force: true });
  }
  return removed;
}

/**
 * The last look at a file (in use? still stale, by the mtime of `base`?) and its rename out of the way in one
 * synchronous step (see reapSnapshots), then its deletion off the event loop. False when it stays.
 */
async function removeUnused(file: string, base: string, used: (file: string) => boolean, stale: (mtimeMs: number) => boolean): Promise<boolean> {
  if (used(base)) return false;
  try {
    if (!stale((existsSync(base) ? statSync(base) : statSync(file)).mtimeMs)) return false;
    renameSync(file, `${file}.reaped`);
  } catch {
    return false; // gone already
  }
  await fs.rm(`${file}.reaped`, { force: true });
  return true;
}
