/**
 * The server's side of native/kindling-btrfs: one long-lived helper process that runs btrfs ioctls (subvolume
 * create, snapshot, delete, qgroup limit, quota enable) one request line at a time. Starting btrfs(8) per operation
 * costs about 20 ms here, the ioctl of a snapshot about 3 ms: the process is started once and kept.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

type Helper = ChildProcessByStdio<Writable, Readable, null>;
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/native/kindling-btrfs, built by scripts/build-native.sh (dist/src/executors/sandbox -> dist/native). */
export const DEFAULT_BTRFS_HELPER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'kindling-btrfs');

/** An operation the helper refused: `errno` is the kernel's (or 22 for a malformed request). */
export class BtrfsError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

interface Waiter {
  resolve: () => void;
  reject: (error: Error) => void;
  request: string;
}

export class BtrfsHelper {
  /** The running helper and the requests written to it, answered in order. */
  private current: { child: Helper; waiting: Waiter[] } | null = null;

  constructor(private readonly helperPath: string = DEFAULT_BTRFS_HELPER_PATH) {}

  subvolume(dir: string, name: string): Promise<void> {
    return this.request(['subvol', dir, name]);
  }

  snapshot(source: string, dir: string, name: string, readOnly: boolean): Promise<void> {
    return this.request(['snap', source, dir, name, readOnly ? 'ro' : 'rw']);
  }

  delete(dir: string, name: string): Promise<void> {
    return this.request(['delete', dir, name]);
  }

  limit(subvolume: string, bytes: number): Promise<void> {
    return this.request(['limit', subvolume, String(Math.round(bytes))]);
  }

  enableQuota(path: string): Promise<void> {
    return this.request(['quota', path]);
  }

  /** Ends the helper (it exits at the end of its stdin); requests still queued are answered first. */
  close(): void {
    this.current?.child.stdin.end();
    this.current = null;
  }

  private request(words: string[]): Promise<void> {
    if (words.some((word) => word.length === 0 || /\s/.test(word))) return Promise.reject(new BtrfsError(22, `bad btrfs request ${JSON.stringify(words)}`));
    const { child, waiting } = this.started();
    const request = words.join(' ');
    return new Promise<void>((resolve, reject) => {
      waiting.push({ resolve, reject, request });
      child.stdin.write(`${request}\n`);
    });
  }

  private started(): { child: Helper; waiting: Waiter[] } {
    if (this.current !== null) return this.current;
    const child = spawn(this.helperPath, [], { stdio: ['pipe', 'pipe', 'ignore'], env: {}, cwd: '/' });
    const current = { child, waiting: [] as Waiter[] };
    this.current = current;
    const { waiting } = current;
    let buffered = '';
    child.stdin.on('error', () => {});
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      buffered += chunk;
      let at: number;
      while ((at = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        const waiter = waiting.shift();
        if (waiter === undefined) continue;
        if (line === 'ok') waiter.resolve();
        else {
          const [, errno, ...text] = line.split(' ');
          waiter.reject(new BtrfsError(Number(errno) || 5, `${waiter.request.split(' ')[0]}: ${text.join(' ') || line}`));
        }
      }
    });
    const fail = (error: Error): void => {
      if (this.current === current) this.current = null;
      // Requests written to this process are lost with it.
      for (const waiter of waiting.splice(0)) waiter.reject(error);
    };
    child.on('error', (error) => fail(error));
    child.on('exit', (code, signal) => fail(new Error(`kindling-btrfs exited (${signal ?? code})`)));
    return current;
  }
}
