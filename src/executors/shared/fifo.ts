import { spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { chmod, chown } from 'node:fs/promises';
import { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Named pipes carry stdio between the server and a sandboxed process: the kernel moves the bytes (no daemon in the
 * path, no base64, full pipe speed), and they can be bind-mounted into any sandbox technology.
 */
export async function makeFifos(paths: string[], options: { mode: number; gid: number }): Promise<void> {
  if (paths.length === 0) return;
  // Node has no mkfifo(3); one short-lived process for all of them. Made 0600 and opened up to the sandbox's group
  // only after the chown, so no other user of the host can open one in between.
  await new Promise<void>((resolve, reject) => {
    const child = spawn('mkfifo', ['-m', '0600', ...paths], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mkfifo failed: ${stderr.trim()}`))));
  });
  await Promise.all(
    paths.map(async (path) => {
      await chown(path, 0, options.gid);
      await chmod(path, options.mode);
    }),
  );
}

export interface FifoReader {
  readonly stream: Socket;
  /**
   * The reader holds a write end of its own so that it cannot see end-of-file before the sandboxed process has opened
   * the pipe. Call this once the process has exited: the stream then ends when the remaining bytes are read.
   */
  releaseKeeper(): void;
}

export function openFifoReader(path: string): FifoReader {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  let keeper: number | null = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
  const stream = new Socket({ fd, readable: true, writable: false });
  return {
    stream,
    releaseKeeper() {
      if (keeper === null) return;
      closeSync(keeper);
      keeper = null;
    },
  };
}

/**
 * Opens the write end of a FIFO once the sandboxed process has opened its read end. A non-blocking open fails with
 * ENXIO until a reader exists, so this polls briefly; it never blocks a libuv thread.
 */
export async function openFifoWriter(
  path: string,
  options: { signal?: AbortSignal; timeoutMs: number; pollMs?: number },
): Promise<Socket> {
  const deadline = performance.now() + options.timeoutMs;
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      const fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
      return new Socket({ fd, readable: false, writable: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
    }
    if (performance.now() > deadline) throw new Error(`no reader opened ${path} within ${options.timeoutMs} ms`);
    await sleep(options.pollMs ?? 1);
  }
}
