/**
 * File uploads and downloads of a persistent sandbox straight on its disk on the host: the directories bwrap binds at
 * the sandbox's /work and /tmp (its btrfs subvolume's work/ and tmp/, or the ext4 design's overlay and tmp dir) are
 * the same files the sandbox sees, so the server moves the bytes between the HTTP body and the file itself through a
 * small native helper (native/kindling-file.c) instead of a FIFO and `cat` inside the sandbox (measured by
 * `npm run bench -- --only sandboxes`, rows file_write_100mib / file_read_100mib).
 *
 * What keeps this as safe as the in-sandbox path: the helper drops to the sandbox's uid and gid before it touches a
 * name (permissions, owners and the disk quota are the sandbox user's), and resolves the path with openat2 beneath
 * the bound directory with no symlink, magic link or mount crossing allowed. A path with a symlink anywhere (planted
 * by the sandbox's user, e.g. to /proc/1/root or to a host path), a directory, a FIFO or any error while opening is
 * answered "not handled" (null here) before a byte moved, and the caller does it inside the sandbox as before, where
 * the sandbox's own view of its file system decides. The sandbox has no capability to mount anything, so for a path
 * without symlinks its view and the host's are the same file.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { dirname, join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { constants as osConstants } from 'node:os';
import { KindlingError } from '../../core/errors.js';
import type { BodyPump } from '../executor.js';

/** dist/native/kindling-file, built by scripts/build-native.sh (dist/src/executors/sandbox -> dist/native). */
export const DEFAULT_FILE_HELPER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'kindling-file');

/** A directory of the host bound at `target` inside the sandbox. */
export interface HostBind {
  target: string;
  source: string;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

export class DirectFiles {
  private readonly available: boolean;

  constructor(
    private binds: HostBind[],
    private readonly uid: number,
    private readonly gid: number,
    private readonly helperPath = DEFAULT_FILE_HELPER_PATH,
  ) {
    this.available = fs.existsSync(helperPath);
  }

  /** A pooled sandbox's disk is renamed when it is adopted: its binds' sources follow. */
  rebind(binds: HostBind[]): void {
    this.binds = binds;
  }

  /**
   * Writes `body` to `path` (an absolute, normalized path of the sandbox), parents made. Resolves with the file's
   * size, or null (nothing read from `body`) when this path is not handled here. A full disk rejects with
   * SANDBOX_DISK_FULL (nothing kept); an error of `body` rejects with it, the helper killed (the partial file may
   * be left: the caller removes it).
   */
  async write(path: string, body: Readable | BodyPump, diskMb: number): Promise<{ size: number } | null> {
    const where = this.locate(path);
    if (where === null) return null;
    const helper = this.start('write', where);
    let bodyError: unknown = null;
    const fail = (error: unknown): void => {
      bodyError ??= error;
      helper.child.kill('SIGKILL');
    };
    const readable = typeof body === 'function' ? null : body;
    readable?.once('error', fail);
    const opened = await helper.next();
    if (bodyError !== null) throw bodyError;
    if (opened.kind !== 'o') {
      readable?.off('error', fail);
      await helper.exited;
      return null;
    }
    const stdin = helper.child.stdin!;
    // The helper stops reading when the disk is full: the rest of the body is not its concern (the route drains it).
    stdin.on('error', () => {});
    let moving: Promise<void> = Promise.resolve();
    if (readable !== null) readable.pipe(stdin);
    else moving = (body as BodyPump)(stdin).then(() => undefined, fail);
    const [last] = await Promise.all([helper.next(), helper.exited, moving]);
    if (readable !== null) {
      readable.off('error', fail);
      readable.unpipe(stdin);
    }
    if (bodyError !== null) throw bodyError;
    if (last.kind === 'd') return { size: last.value };
    if (last.kind === 'e' && (last.errno === 'EDQUOT' || last.errno === 'ENOSPC')) {
      throw new KindlingError('SANDBOX_DISK_FULL', `${path} does not fit in the sandbox's writable space (diskMb ${diskMb}); nothing was kept`, { details: { path, diskMb } });
    }
    throw new KindlingError('SANDBOX_PATH_INVALID', `${path}: writing failed (${last.errno ?? helper.stderr().trim().slice(-300)})`, { details: { path } });
  }

  /** The content of `path` as a stream, or null when this path is not handled here (nothing was read). */
  async read(path: string): Promise<Readable | null> {
    const where = this.locate(path);
    if (where === null) return null;
    const helper = this.start('read', where);
    const stdout = helper.child.stdout!;
    // Consumed from the start: node discards the unread output of a child that exited with nobody reading it (its
    // stdio are flushed at exit), and a small file's helper exits before the caller gets the stream. So downloads go
    // through node (measured: the helper alone still moves them several times faster than the in-sandbox path).
    const through = new PassThrough();
    stdout.once('error', (error) => through.destroy(error));
    // The download ends only once the helper said it sent the whole file ("d"): a read error or a killed helper must
    // not look like a complete (short) file to the client, so those destroy the stream instead.
    stdout.pipe(through, { end: false });
    const stdoutEnded = new Promise<void>((resolve) => stdout.once('end', resolve));
    // A download given up half-way: the helper goes (it would otherwise wait on a full pipe).
    through.once('close', () => {
      stdout.destroy();
      if (helper.child.exitCode === null) helper.child.kill('SIGKILL');
    });
    const opened = await helper.next();
    if (opened.kind !== 'o') {
      through.resume();
      await helper.exited;
      return null;
    }
    void stdoutEnded.then(() => {
      void helper.next().then((last) => {
        if (through.destroyed) return;
        if (last.kind === 'd') through.end();
        else through.destroy(new KindlingError('SANDBOX_PATH_INVALID', `${path}: reading failed after ${opened.value} bytes were announced (${last.errno ?? (helper.stderr().trim().slice(-300) || 'the helper ended')})`, { details: { path } }));
      });
    });
    return through;
  }

  /** The bind `path` is under and the path relative to it; null: not under one (or the bound directory itself). */
  private locate(path: string): { root: string; rel: string } | null {
    if (!this.available) return null;
    for (const bind of this.binds) {
      if (!path.startsWith(`${bind.target}/`)) continue;
      const rel = path.slice(bind.target.length + 1);
      if (rel === '' || rel.split('/').some((part) => part === '' || part === '.' || part === '..')) return null;
      return { root: bind.source, rel };
    }
    return null;
  }

  private start(mode: 'write' | 'read', where: { root: string; rel: string }): HelperRun {
    const child = spawn(this.helperPath, [mode, where.root, where.rel, String(this.uid), String(this.gid)], {
      stdio: [mode === 'write' ? 'pipe' : 'ignore', mode === 'read' ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    return new HelperRun(child);
  }
}

interface StatusLine {
  kind: 'f' | 'o' | 'd' | 'e' | 'none';
  value: number;
  errno: string | null;
}

/** One run of the helper: its status lines (fd 3) in order, its stderr's tail, its exit. */
class HelperRun {
  readonly exited: Promise<number | null>;
  private readonly lines: StatusLine[] = [];
  private waiting: ((line: StatusLine) => void) | null = null;
  private ended = false;
  private buffered = '';
  private errTail = '';

  constructor(readonly child: ReturnType<typeof spawn>) {
    const status = child.stdio[3] as Readable;
    status.setEncoding('utf8');
    status.on('data', (chunk: string) => {
      this.buffered += chunk;
      let at: number;
      while ((at = this.buffered.indexOf('\n')) >= 0) {
        const [kind, value] = this.buffered.slice(0, at).split(' ');
        this.buffered = this.buffered.slice(at + 1);
        const number = Number(value);
        this.push({ kind: (['f', 'o', 'd', 'e'].includes(kind!) ? kind : 'none') as StatusLine['kind'], value: number, errno: kind === 'e' || kind === 'f' ? (ERRNO_NAMES.get(number) ?? String(number)) : null });
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => (this.errTail = (this.errTail + chunk).slice(-2000)));
    this.exited = new Promise((resolve) => {
      child.once('error', () => resolve(null));
      child.once('close', (code) => resolve(code));
    });
    void this.exited.then(() => {
      this.ended = true;
      this.push(null);
    });
  }

  /** The next status line; kind 'none' once the helper ended without one (killed, or failed before reporting). */
  next(): Promise<StatusLine> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.ended) return Promise.resolve({ kind: 'none', value: NaN, errno: null });
    return new Promise((resolve) => (this.waiting = resolve));
  }

  stderr(): string {
    return this.errTail;
  }

  private push(line: StatusLine | null): void {
    const waiting = this.waiting;
    if (waiting !== null) {
      this.waiting = null;
      waiting(line ?? { kind: 'none', value: NaN, errno: null });
    } else if (line !== null) {
      this.lines.push(line);
    }
  }
}
