import { connect, type Socket } from 'node:net';

export interface LoadOptions {
  url: URL;
  method: string;
  path: string;
  /** Request headers besides host and content-length (lower-case names). */
  headers: Record<string, string>;
  body: Buffer;
  /** Keep-alive connections, each with one request in flight (no pipelining). */
  connections: number;
  /** Requests in all. */
  total: number;
  /** The status every answer must have. */
  status: number;
}

export interface LoadResult {
  /** Answers received whole with `status`: always `total` (anything else rejects). */
  answered: number;
  /** From the first request written to the last answer read. */
  seconds: number;
}

const STATUS_LINE = /^HTTP\/1\.[01] (\d{3}) /;
const CONTENT_LENGTH = /\r\ncontent-length:[ \t]*(\d+)[ \t]*(?=\r\n|$)/i;
const TRANSFER_ENCODING = /\r\ntransfer-encoding:/i;
const CONNECTION_CLOSE = /\r\nconnection:[ \t]*close/i;

/**
 * A load generator for many small requests over keep-alive HTTP/1.1: the same prebuilt request written on each of
 * `connections` sockets, the next one as soon as the answer to the previous one was read whole. Every answer is
 * checked: its status must be `status`, its body is read to its Content-Length; anything else (another status, a
 * chunked or close-delimited answer, a connection the server closes) fails the run.
 *
 * Why not node:http: its ClientRequest costs ~50-80 µs of CPU a request. On the bench's 2 cores the client shares a
 * core with the server's sandboxes, and a slow client leaves the server waiting for requests: in the async enqueue
 * phase the client took ~35% of a core with node:http and the server was busy ~80% of the time; with this, ~13% and
 * ~90% (same server, alternated runs).
 */
export function runLoad(options: LoadOptions): Promise<LoadResult> {
  const head = [`${options.method} ${options.path} HTTP/1.1`, `host: ${options.url.host}`, `content-length: ${options.body.length}`];
  for (const [name, value] of Object.entries(options.headers)) head.push(`${name}: ${value}`);
  const request = Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), options.body]);
  const port = Number(options.url.port || 80);
  const host = options.url.hostname;

  return new Promise((resolve, reject) => {
    const sockets: Socket[] = [];
    let written = 0;
    let answered = 0;
    let failed = false;
    // The clock includes opening the connections (as a fresh keep-alive pool's first requests do).
    const started = performance.now();
    const fail = (error: Error): void => {
      if (failed) return;
      failed = true;
      for (const socket of sockets) socket.destroy();
      reject(error);
    };
    let open = Math.max(1, Math.min(options.connections, options.total));
    for (let i = open; i > 0; i--) {
      const socket = connect({ host, port, noDelay: true });
      sockets.push(socket);
      let pending: Buffer = Buffer.alloc(0);
      const next = (): void => {
        if (written >= options.total) {
          socket.end();
          return;
        }
        written++;
        socket.write(request);
      };
      socket.on('connect', next);
      socket.on('data', (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        const headText = pending.toString('latin1', 0, end);
        const status = STATUS_LINE.exec(headText)?.[1];
        const length = CONTENT_LENGTH.exec(headText)?.[1];
        if (status === undefined || length === undefined || TRANSFER_ENCODING.test(headText) || CONNECTION_CLOSE.test(headText)) {
          fail(new Error(`load: an answer this client does not take (it needs Content-Length and keep-alive): ${headText.slice(0, 300)}`));
          return;
        }
        const size = end + 4 + Number(length);
        if (pending.length < size) return;
        if (Number(status) !== options.status) {
          fail(new Error(`load: answer ${status} instead of ${options.status}: ${pending.toString('utf8', end + 4, Math.min(size, end + 4 + 300))}`));
          return;
        }
        if (pending.length > size) {
          fail(new Error('load: bytes after an answer, which no request asked for'));
          return;
        }
        pending = Buffer.alloc(0);
        answered++;
        next();
      });
      socket.on('error', (error) => fail(error));
      socket.on('close', () => {
        if (failed) return;
        // A connection closes when it has no more work (we end it); one the server closes earlier fails the run.
        if (written < options.total) fail(new Error('load: the server closed a connection before the run ended'));
        else if (--open === 0) {
          if (answered === options.total) resolve({ answered, seconds: (performance.now() - started) / 1000 });
          else fail(new Error(`load: ${answered} of ${options.total} requests answered`));
        }
      });
    }
  });
}
