/**
 * File helpers of the image builder: removal that never crosses a mount point, tree measurements, the installed
 * package list of a rootfs, a logged child process, bounded parallelism and human-readable sizes.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import path from 'node:path';

/** Anything with info/warn (console, a pino logger, a test spy). `debug` gets mmdebstrap's own output. */
export interface ImageLog {
  info(msg: string): void;
  warn(msg: string): void;
  debug?(msg: string): void;
}
export const silentLog: ImageLog = { info: () => {}, warn: () => {} };


/**
 * rm -rf that never descends into a mount point: an interrupted mmdebstrap (root mode) can leave /proc, /sys or /dev
 * mounted inside its target, and deleting through a bind mount of the host's /dev would be a disaster. Mounts found
 * below `target` are lazily unmounted first; if any remain, nothing is deleted.
 */
export async function safeRemove(target: string, log: ImageLog = silentLog): Promise<void> {
  let real: string;
  try {
    real = await fs.realpath(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  let mounts = await mountsUnder(real);
  if (mounts.length > 0) {
    for (const m of mounts.sort((a, b) => b.length - a.length)) {
      log.warn(`unmounting leftover mount ${m}`);
      await runLogged('umount', ['-l', m], { what: `umount ${m}` }).catch(() => {});
    }
    mounts = await mountsUnder(real);
    if (mounts.length > 0) throw new Error(`refusing to delete ${real}: still mounted below it: ${mounts.join(', ')}`);
  }
  await fs.rm(real, { recursive: true, force: true });
}

export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const mp = field.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    if (mp === dir || mp.startsWith(dir + '/')) out.push(mp);
  }
  return out;
}

/** Parses var/lib/dpkg/status for installed packages. */
export async function readInstalledPackages(rootfsDir: string): Promise<Record<string, string>> {
  const text = await fs.readFile(path.join(rootfsDir, 'var/lib/dpkg/status'), 'utf8').catch(() => '');
  const out: Record<string, string> = {};
  for (const block of text.split(/\n\n+/)) {
    const pkg = /^Package: (.+)$/m.exec(block)?.[1];
    const ver = /^Version: (.+)$/m.exec(block)?.[1];
    const status = /^Status: (.+)$/m.exec(block)?.[1];
    if (pkg && ver && status?.endsWith(' installed')) out[pkg] = ver;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Apparent size (regular files + symlinks, hard links once) and entry count, without crossing mount points. */
export async function measureTree(root: string): Promise<{ sizeBytes: number; fileCount: number }> {
  const { sizeBytes, entries } = await walk(root);
  return { sizeBytes, fileCount: entries };
}

export async function measureDisk(root: string): Promise<{ diskBytes: number; inodes: number }> {
  const { diskBytes, entries } = await walk(root);
  return { diskBytes, inodes: entries };
}

export async function walk(root: string): Promise<{ sizeBytes: number; diskBytes: number; entries: number }> {
  const rootDev = (await fs.lstat(root)).dev;
  const seen = new Set<string>();
  let sizeBytes = 0;
  let diskBytes = 0;
  let entries = 0;
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop() as string;
    for (const name of await fs.readdir(dir)) {
      const full = path.join(dir, name);
      const st = await fs.lstat(full);
      entries++;
      if (st.isDirectory()) {
        diskBytes += 4096;
        if (st.dev === rootDev) stack.push(full);
      } else if (st.isFile() || st.isSymbolicLink()) {
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (seen.has(key)) continue;
          seen.add(key);
        }
        sizeBytes += st.size;
        diskBytes += st.isFile() || st.size > 59 ? Math.ceil(st.size / 4096) * 4096 : 0;
      }
    }
  }
  return { sizeBytes, diskBytes, entries };
}

export async function runLogged(
  cmd: string,
  args: string[],
  opts: { signal?: AbortSignal; onLine?: (line: string) => void; what: string },
): Promise<void> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const onData = (buf: Buffer, carry: { s: string }): void => {
    carry.s += buf.toString();
    const lines = carry.s.split('\n');
    carry.s = lines.pop() ?? '';
    for (const l of lines) {
      opts.onLine?.(l);
      tail.push(l);
      if (tail.length > 40) tail.shift();
    }
  };
  const out = { s: '' };
  const err = { s: '' };
  child.stdout.on('data', (b: Buffer) => onData(b, out));
  child.stderr.on('data', (b: Buffer) => onData(b, err));
  const onAbort = (): void => {
    child.kill('SIGTERM');
    setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 10_000).unref();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c, s) => resolve([c, s]));
    });
    for (const rest of [out.s, err.s]) if (rest) tail.push(rest);
    if (opts.signal?.aborted) {
      const reason: unknown = opts.signal.reason;
      throw reason instanceof Error ? reason : new Error(`${opts.what} aborted`);
    }
    if (code !== 0) {
      throw new Error(`${opts.what} exited with ${code ?? sig}:\n${tail.slice(-15).join('\n')}`);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} not found: run scripts/setup.sh`);
    throw e;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

export async function isDir(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

export async function fileSize(p: string): Promise<number | null> {
  try {
    return (await fs.stat(p)).size;
  } catch {
    return null;
  }
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
