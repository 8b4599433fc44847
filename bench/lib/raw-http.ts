import { request, type Agent } from 'node:http';

/** An answer read whole into memory. */
export interface RawReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * One request over node:http with the caller's keep-alive agent: no SDK, no fetch layers, so what is timed is the
 * server's work plus a loopback round trip. Content-Length is set for a body; the caller names every other header.
 */
export function sendRaw(agent: Agent, base: URL, method: string, path: string, body: Buffer | null, headers: Record<string, string> = {}): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: base.hostname, port: base.port, method, path, agent, headers: { ...headers, ...(body === null ? {} : { 'content-length': String(body.length) }) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body ?? undefined);
  });
}
