/** A raw streaming client for tests: `size` random bytes up (streamed, never whole in memory), both directions hashed. */
import { createHash, randomBytes } from 'node:crypto';
import { request, type Agent, type IncomingHttpHeaders } from 'node:http';

export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  trailers: NodeJS.Dict<string>;
  sentHash: string;
  gotHash: string;
  gotBytes: number;
  body: Buffer;
  reusedSocket: boolean;
}

export interface SendOptions {
  /** Declare the length (Content-Length) instead of sending chunked. */
  contentLength?: boolean;
  agent?: Agent;
  headers?: Record<string, string>;
  /** Keep at most this many bytes of the answer. */
  keepBytes?: number;
}

/** Sends `size` random bytes, streamed, and hashes both directions. */
export function streamRandom(url: string, path: string, size: number, options: SendOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const target = new URL(path, url);
    const sent = createHash('sha256');
    const got = createHash('sha256');
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream', te: 'trailers', ...options.headers };
    if (options.contentLength) headers['content-length'] = size;
    const req = request({ host: target.hostname, port: target.port, path: target.pathname, method: 'POST', agent: options.agent ?? false, headers }, (res) => {
      let gotBytes = 0;
      const kept: Buffer[] = [];
      res.on('data', (chunk: Buffer) => {
        got.update(chunk);
        if (gotBytes < (options.keepBytes ?? 64 * 1024)) kept.push(chunk);
        gotBytes += chunk.length;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, trailers: res.trailers, sentHash: sent.digest('hex'), gotHash: got.digest('hex'), gotBytes, body: Buffer.concat(kept), reusedSocket: req.reusedSocket }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    let left = size;
    const pump = (): void => {
      while (left > 0) {
        const chunk = randomBytes(Math.min(left, 256 * 1024));
        left -= chunk.length;
        sent.update(chunk);
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

