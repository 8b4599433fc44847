/**
 * Cleanup of what microVMs leave behind after a crash, for both drivers: VM directories (with their vm.json naming the
 * owner and the VMM's pid) and snapshot files that nobody has used for a while (their key changes whenever the kernel,
 * agent, image or shape changes, so old ones would otherwise pile up).
 */
import { readdirSync, readFileSync } from 'node:fs';
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
 * from it) for `maxAgeMs`, except those in `inUse`, and half-written `*.<pid>.tmp` files whose writer is gone.
 */
export async function reapSnapshots(snapshotsDir: string, maxAgeMs: number, inUse: ReadonlySet<string>, now = Date.now()): Promise<number> {
  let removed = 0;
  for (const entry of await fs.readdir(snapshotsDir).catch(() => [] as string[])) {
    const file = path.join(snapshotsDir, entry);
    const tmp = /\.(\d+)\.tmp(\.mem)?$/.exec(entry);
    let stale: boolean;
    if (tmp) {
      stale = !processAlive(Number(tmp[1]));
    } else {
      const base = file.replace(/\.mem$/, '');
      if (inUse.has(base)) continue;
      const stat = await fs.stat(file).catch(() => null);
      if (!stat) continue;
      stale = now - stat.mtimeMs > maxAgeMs;
    }
    if (stale) {
      await fs.rm(file, { force: true });
      removed++;
    }
  }
  return removed;
}
