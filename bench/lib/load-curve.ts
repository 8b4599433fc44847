import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface CurveStepOptions {
  url: URL;
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
  /** Keep-alive connections, each with one request in flight (closed-loop clients). */
  connections: number;
  durationMs: number;
  /** The status an answer must have to count as ok. */
  status: number;
}

export interface CurveStep {
  connections: number;
  ok: number;
  /** Answers with another status, or connections the server closed. */
  errors: number;
  seconds: number;
  perSecond: number;
  /** Latency of every ok answer in ms, in completion order. */
  samples: number[];
}

const STATUS_LINE = /^HTTP\/1\.[01] (\d{3}) /;
const CONTENT_LENGTH = /\r\ncontent-length:[ \t]*(\d+)[ \t]*(?=\r\n|$)/i;

/**
 * Closed-loop load for a fixed time: `connections` keep-alive sockets, each sending the next prebuilt request as soon
 * as the previous answer was read whole (by Content-Length), recording each latency. Raw sockets rather than
 * node:http (see load.ts: ~50-80 µs of client CPU a request, which on 2 cores would be the server's loss); undici is
 * not a dependency of the project. Answers must carry Content-Length.
 */
export function runCurveStep(options: CurveStepOptions): Promise<CurveStep> {
  const head = [`${options.method} ${options.path} HTTP/1.1`, `host: ${options.url.host}`, `content-length: ${options.body.length}`];
  for (const [name, value] of Object.entries(options.headers)) head.push(`${name}: ${value}`);
  const request = Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), options.body]);
  const samples: number[] = [];
  let errors = 0;
  const started = performance.now();
  const until = started + options.durationMs;
  return new Promise((resolve) => {
    let open = options.connections;
    const sockets: Socket[] = [];
    const done = (): void => {
      if (--open > 0) return;
      const seconds = (performance.now() - started) / 1000;
      resolve({ connections: options.connections, ok: samples.length, errors, seconds, perSecond: samples.length / seconds, samples });
    };
    for (let i = 0; i < options.connections; i++) {
      const socket = connect({ host: options.url.hostname, port: Number(options.url.port || 80), noDelay: true });
      sockets.push(socket);
      let pending: Buffer = Buffer.alloc(0);
      let sentAt = 0;
      let finished = false;
      const finish = (): void => {
        if (finished) return;
        finished = true;
        socket.destroy();
        done();
      };
      const next = (): void => {
        if (performance.now() >= until) {
          finish();
          return;
        }
        sentAt = performance.now();
        socket.write(request);
      };
      socket.on('connect', next);
      socket.on('data', (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        const headText = pending.toString('latin1', 0, end);
        const length = CONTENT_LENGTH.exec(headText)?.[1];
        if (length === undefined) {
          errors++;
          finish();
          return;
        }
        if (pending.length < end + 4 + Number(length)) return;
        if (Number(STATUS_LINE.exec(headText)?.[1]) === options.status) samples.push(performance.now() - sentAt);
        else errors++;
        pending = pending.subarray(end + 4 + Number(length));
        next();
      });
      socket.on('error', () => {
        if (!finished) errors++;
        finish();
      });
      socket.on('close', finish);
    }
  });
}
