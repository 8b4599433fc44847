import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { chmod, chown } from 'node:fs/promises';
import { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Named pipes carry stdio between the server and a sandboxed process: the kernel moves the bytes (no daemon in the
 * path, no base64, full pipe speed), and they can be bind-mounted into any sandbox technology.
 */
export async function makeFifos(paths: string[], options: { mode: number; gid: number }): Promise<void> {
  if (paths.length === 0) return;
  // Node has no mkfifo(3). Made 0600 and opened up to the sandbox's group only after the chown, so no other user of
  // the host can open one in between.
  await fifoMaker.make(paths);
  await Promise.all(
    paths.map(async (path) => {
      await chown(path, 0, options.gid);
      await chmod(path, options.mode);
    }),
  );
}

/**
 * The script of the FIFO maker: per request, paths one per line and an empty line; it answers `ok`, or `fail` and
 * what mkfifo said, on one line. It ends at end of input, that is when the server's process goes, however it went.
 */
const MAKER_SCRIPT = [
  'while :; do',
  '  set --',
  '  while IFS= read -r p && [ -n "$p" ]; do set -- "$@" "$p"; done',
  '  [ $# -gt 0 ] || exit 0',
  '  if err=$(mkfifo -m 0600 -- "$@" 2>&1); then echo ok; else printf \'fail %s\\n\' "$(printf %s "$err" | tr \'\\n\' \' \')"; fi',
  'done',
].join('\n');

/**
 * One long-lived `sh` of the host that runs mkfifo for the server. A spawn from the server's process forks that whole
 * process on its event loop (10 to 25 ms each here, measured with --cpu-prof: the largest cost of a persistent
 * sandbox's command, whose FIFOs are made in batches, and of a docker execution); the shell forks only itself.
 * Requests go one at a time. A maker that died is started again at the next request, which then falls back to a
 * mkfifo of its own if the new one fails too.
 */
/** How long the maker may take to answer one request before it is replaced. */
const MAKER_ANSWER_TIMEOUT_MS = 10_000;

export class FifoMaker {
  private child: ChildProcessWithoutNullStreams | null = null;
  private lines: AsyncIterator<string> | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly answerTimeoutMs = MAKER_ANSWER_TIMEOUT_MS) {}

  make(paths: string[]): Promise<void> {
    const run = this.queue.then(() => this.request(paths));
    this.queue = run.catch(() => {});
    return run;
  }

  private async request(paths: string[]): Promise<void> {
    // A name the protocol cannot carry (never made by this server, but possible in an operator's data dir).
    if (paths.some((path) => path.includes('\n') || path === '')) return mkfifoOnce(paths);
    let answer: string | undefined;
    let stdout: Socket | null = null;
    try {
      const lines = this.start();
      // Held while a request waits for its answer (a caller with nothing else running must not see its process end).
      stdout = this.child!.stdout as Socket;
      stdout.ref();
      this.child!.stdin.write(`${paths.join('\n')}\n\n`);
      // Every execution's FIFOs wait behind this request: a maker that does not answer (a hung file system) is
      // replaced, and the request made on its own, instead of holding them all.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, this.answerTimeoutMs, undefined)));
      answer = await Promise.race([lines.next().then((line) => line.value as string | undefined), late]).finally(() => clearTimeout(timer));
    } catch {
      answer = undefined;
    } finally {
      stdout?.unref();
    }
    if (answer === 'ok') return;
    if (answer !== undefined && answer.startsWith('fail')) throw new Error(`mkfifo failed: ${answer.slice(5).trim()}`);
    // The maker is gone (or never started): the next request starts another; this one is made by a mkfifo of its own.
    this.stop();
    return mkfifoOnce(paths);
  }

  private start(): AsyncIterator<string> {
    if (this.child !== null && this.lines !== null && this.child.exitCode === null) return this.lines;
    const child = spawn('/bin/sh', ['-c', MAKER_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.on('error', () => this.stop());
    child.stdin.on('error', () => this.stop());
    child.stdout.on('error', () => this.stop());
    child.stderr.resume();
    // Not what keeps the server's process alive: it ends by itself once the server's end of its stdin closes.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr] as unknown as Array<{ unref?: () => void }>) stream.unref?.();
    this.child = child;
    this.lines = createInterface({ input: child.stdout, crlfDelay: Infinity })[Symbol.asyncIterator]();
    return this.lines;
  }

  /** The maker's pid (tests kill it to see the next request start another); null before the first request. */
  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  private stop(): void {
    this.child?.kill('SIGKILL');
    this.child = null;
    this.lines = null;
  }
}

const fifoMaker = new FifoMaker();

function mkfifoOnce(paths: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn('mkfifo', ['-m', '0600', '--', ...paths], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mkfifo failed: ${stderr.trim()}`))));
  });
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
