/**
 * Which commands a sandbox can exec without the shell shim (bwrap-args.ts, EXEC_SHIM).
 *
 * The shim (`/bin/sh -c 'exec "$@"'`) exists so that a missing or non-executable command ends as exit 127/126 with the
 * shell's message, as in Docker, instead of bwrap's exit 1. It costs every sandbox one more exec of a dynamically linked
 * program: for `echo` 7 of the 23 ms of CPU a fresh sandbox took here. When the command is an ELF executable of the
 * image that any user may run, with its ELF interpreter present, bwrap's own execvp cannot fail that way, and the shim
 * is skipped.
 *
 * The lookup happens on the host, in the image's rootfs, as the sandbox's execvp would do it: the sandbox's PATH in
 * order, symlinks resolved inside the rootfs (an absolute target from the image's root, `..` stopping there), never
 * through a host symlink. It reports every sandbox path it went through, so that the caller can refuse a result when
 * one of them lies under something the sandbox mounts (its /tmp, work dir, binds): there the rootfs is not what the
 * sandbox sees. Anything unusual (a relative PATH entry, a directory on the way that others cannot search, a name that
 * exists but is not such an executable, a link loop, a PATH of more than 32 entries) keeps the shim, which is always
 * right. A built image's rootfs does not change (a rebuilt one is a new directory), so lookups are cached per rootfs
 * directory (device and inode), in one cache bounded in entries and bytes: tenants choose the names and the PATH.
 */
import * as fs from 'node:fs';

export interface CommandLookup {
  /** true: the command is an ELF executable of the image, reached through `visited` only. */
  direct: boolean;
  /** Every absolute path in the sandbox the lookup went through (each PATH candidate, each link, the ELF interpreter). */
  visited: readonly string[];
}

/** What a lookup needs of an image layout (rootfs.ts): its directory and the top-level names bound from it. */
export interface ImageRoot {
  rootfs: string;
  entries: ReadonlyMap<string, unknown>;
}

const KEEP_SHIM: CommandLookup = { direct: false, visited: [] };
/** As the kernel's limit on links followed in one lookup. */
const MAX_LINKS = 40;
/** The cache starts over when it holds this many lookups, or this many bytes of keys and paths. */
const MAX_CACHED = 1024;
const MAX_CACHED_BYTES = 4 << 20;
const NAME_MAX = 255;
const MAX_PATH_ENV = 4096;
const MAX_PATH_ENTRIES = 32;
/** Paths one lookup may go through (each an lstat), all PATH entries and links together. */
const MAX_VISITED = 256;
const S_IXOTH = 0o001;
const PT_INTERP = 3;
/** ELF e_type of what execve runs: an executable or a position-independent one. */
const ET_EXEC = 2;
const ET_DYN = 3;
/** ELF e_machine of the host's architecture: an executable for another one is not direct. */
const HOST_MACHINE: Record<string, number> = { x64: 62, arm64: 183 };

/** A path that ends in `/`, `/.` or `/..` names a directory whatever its last name is. */
const namesDirectory = (p: string): boolean => p.endsWith('/') || p.endsWith('/.') || p.endsWith('/..') || p === '.' || p === '..';

type Resolved = { kind: 'file'; sandboxPath: string; stat: fs.Stats } | { kind: 'missing' } | { kind: 'unknown' };

/**
 * `sandboxPath` (absolute) resolved inside the image: every component is lstat'ed in the rootfs and links are followed
 * by hand, so the host resolves no link of the image. A top-level name the image does not provide (/proc, /tmp, ...)
 * is `unknown`: the sandbox has something else there.
 */
function resolveInImage(image: ImageRoot, sandboxPath: string, visited: string[]): Resolved {
  // Bounds the synchronous lstat calls of one lookup (a tenant's PATH can be long): past it, the shell looks.
  if (visited.length >= MAX_VISITED || namesDirectory(sandboxPath)) return { kind: 'unknown' };
  let pending = sandboxPath.split('/').filter((part) => part !== '' && part !== '.');
  let resolved = '';
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift() as string;
    if (name === '..') {
      resolved = resolved.slice(0, resolved.lastIndexOf('/'));
      continue;
    }
    if (resolved === '' && !image.entries.has(name)) return { kind: 'unknown' };
    const next = `${resolved}/${name}`;
    if (visited.push(next) > MAX_VISITED) return { kind: 'unknown' };
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(image.rootfs + next);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      return code === 'ENOENT' || code === 'ENOTDIR' ? { kind: 'missing' } : { kind: 'unknown' };
    }
    if (stat.isSymbolicLink()) {
      if (++links > MAX_LINKS) return { kind: 'unknown' };
      let target: string;
      try {
        target = fs.readlinkSync(image.rootfs + next);
      } catch {
        return { kind: 'unknown' };
      }
      // A link to `dir/` at the end of the path asks for a directory: execve's ENOTDIR, the shell's message.
      if (pending.length === 0 && namesDirectory(target)) return { kind: 'unknown' };
      if (target.startsWith('/')) resolved = '';
      pending = [...target.split('/').filter((part) => part !== '' && part !== '.'), ...pending];
      continue;
    }
    if (pending.length > 0) {
      if (!stat.isDirectory()) return { kind: 'missing' };
      // The sandbox's uid is no owner or group of the image's files: a directory it cannot search is EACCES there.
      if ((stat.mode & S_IXOTH) === 0) return { kind: 'unknown' };
    }
    resolved = next;
    if (pending.length === 0) return { kind: 'file', sandboxPath: resolved, stat };
  }
  return { kind: 'unknown' };
}

/** Reads exactly `length` bytes at `position`, or null when the file is shorter. */
function readAt(fd: number, length: number, position: number): Buffer | null {
  const buffer = Buffer.alloc(length);
  return fs.readSync(fd, buffer, 0, length, position) === length ? buffer : null;
}

/**
 * For a 64-bit little-endian ELF executable of the host's architecture: its interpreter's path, or '' when it has
 * none (static); null for anything else (a script, another architecture, an unreadable file).
 */
function elfInterpreter(hostPath: string): string | null {
  let fd: number;
  try {
    fd = fs.openSync(hostPath, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const header = readAt(fd, 64, 0);
    if (header === null || header.readUInt32BE(0) !== 0x7f454c46 || header[4] !== 2 || header[5] !== 1) return null;
    const type = header.readUInt16LE(0x10);
    if ((type !== ET_EXEC && type !== ET_DYN) || header.readUInt16LE(0x12) !== HOST_MACHINE[process.arch]) return null;
    const phoff = Number(header.readBigUInt64LE(0x20));
    const phentsize = header.readUInt16LE(0x36);
    const phnum = header.readUInt16LE(0x38);
    // As the kernel's loader: 64-bit program headers of 56 bytes, at least one.
    if (phentsize !== 56 || phnum === 0 || phnum > 128) return null;
    const table = readAt(fd, phentsize * phnum, phoff);
    if (table === null) return null;
    for (let i = 0; i < phnum; i++) {
      const entry = i * phentsize;
      if (table.readUInt32LE(entry) !== PT_INTERP) continue;
      const size = Number(table.readBigUInt64LE(entry + 32));
      if (size < 2 || size > 256) return null;
      const interpreter = readAt(fd, size, Number(table.readBigUInt64LE(entry + 8)));
      if (interpreter === null || interpreter[size - 1] !== 0) return null;
      const text = interpreter.subarray(0, size - 1).toString('latin1');
      return text.startsWith('/') && !text.includes('\0') ? text : null;
    }
    return '';
  } catch {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

const runnableFile = (resolved: Resolved): resolved is Extract<Resolved, { kind: 'file' }> =>
  resolved.kind === 'file' && resolved.stat.isFile() && (resolved.stat.mode & S_IXOTH) !== 0;

/** The lookup itself, uncached. */
function lookupCommand(image: ImageRoot, command: string, pathEnv: string | undefined): CommandLookup {
  if (command === '' || command.includes('\0') || command.length > MAX_PATH_ENV) return KEEP_SHIM;
  let candidates: string[];
  if (command.includes('/')) {
    // Relative to the work dir: a mount of the sandbox, never the image.
    if (!command.startsWith('/')) return KEEP_SHIM;
    candidates = [command];
  } else {
    if (command.length > NAME_MAX || pathEnv === undefined || pathEnv.length > MAX_PATH_ENV) return KEEP_SHIM;
    const dirs = pathEnv.split(':');
    // An empty or relative entry means the work dir: the shell decides.
    if (dirs.length > MAX_PATH_ENTRIES || dirs.some((dir) => !dir.startsWith('/'))) return KEEP_SHIM;
    // Joined as execvp joins them: a `..` in an entry applies after the links before it, in resolveInImage.
    candidates = dirs.map((dir) => `${dir}/${command}`);
  }
  const visited: string[] = [];
  for (const candidate of candidates) {
    const found = resolveInImage(image, candidate, visited);
    if (found.kind === 'missing') continue;
    if (!runnableFile(found)) return KEEP_SHIM;
    const interpreter = elfInterpreter(image.rootfs + found.sandboxPath);
    if (interpreter === null) return KEEP_SHIM;
    if (interpreter !== '' && !runnableFile(resolveInImage(image, interpreter, visited))) return KEEP_SHIM;
    return { direct: true, visited: [...new Set(visited)] };
  }
  return KEEP_SHIM;
}

/** Lookups of commands in images, cached per rootfs directory (its device, inode and change time: a rebuilt image is another). */
export class ImageCommands {
  private readonly cache = new Map<string, CommandLookup>();
  private cachedBytes = 0;

  lookup(image: ImageRoot, command: string, pathEnv: string | undefined): CommandLookup {
    // Over the limits the answer is the shell's anyway: not worth a place in the cache.
    if (command.length > MAX_PATH_ENV || (pathEnv !== undefined && pathEnv.length > MAX_PATH_ENV)) return KEEP_SHIM;
    let rootfs: fs.Stats;
    try {
      rootfs = fs.statSync(image.rootfs);
    } catch {
      return KEEP_SHIM;
    }
    // An image removed and built again may get the inode back: its change time tells them apart.
    const key = `${rootfs.dev}:${rootfs.ino}:${rootfs.ctimeMs}\0${pathEnv ?? '\0'}\0${command}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    const result = lookupCommand(image, command, pathEnv);
    const bytes = key.length + result.visited.reduce((sum, visited) => sum + visited.length, 0);
    if (this.cache.size >= MAX_CACHED || this.cachedBytes + bytes > MAX_CACHED_BYTES) {
      this.cache.clear();
      this.cachedBytes = 0;
    }
    this.cache.set(key, result);
    this.cachedBytes += bytes;
    return result;
  }
}

/** Whether any path the lookup went through is `target` or lies below it. */
export function passesThrough(lookup: CommandLookup, targets: readonly string[]): boolean {
  // Visited paths are clean (no `.`, `..` or empty names); a target may end in `/` (a work dir given so): `/` is all.
  const clean = targets.map((target) => target.replace(/\/+$/, ''));
  return lookup.visited.some((visited) => clean.some((target) => target === '' || visited === target || visited.startsWith(`${target}/`)));
}
