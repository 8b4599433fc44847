/** The bench's load generator (bench/lib/load.ts) against a plain node:http server: it counts and checks every answer. */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { runLoad } from '../bench/lib/load.js';

async function withServer(handler: (request: IncomingMessage, response: ServerResponse, body: Buffer) => void, run: (url: URL) => Promise<void>): Promise<void> {
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => handler(request, response, Buffer.concat(chunks)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await run(new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

const options = (url: URL, total: number) => ({ url, method: 'POST', path: '/v1/functions/f/invoke', headers: { 'content-type': 'application/octet-stream', 'x-kindling-async': 'true' }, body: Buffer.from('x'), connections: 8, total, status: 202 });

describe('bench load generator', () => {
  it('sends exactly `total` requests (method, path, headers, body) over the connections and counts every 202', async () => {
    const seen = { requests: 0, sockets: new Set<unknown>(), bad: [] as string[] };
    await withServer(
      (request, response, body) => {
        seen.requests++;
        seen.sockets.add(request.socket);
        if (request.method !== 'POST' || request.url !== '/v1/functions/f/invoke' || request.headers['x-kindling-async'] !== 'true' || !body.equals(Buffer.from('x'))) seen.bad.push(`${request.method} ${request.url} ${body}`);
        const json = JSON.stringify({ invocationId: `inv_${seen.requests}`, status: 'queued' });
        // Sometimes the head and the body in two writes: the answer is read whole either way.
        if (seen.requests % 3 === 0) {
          response.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
          response.flushHeaders();
          setImmediate(() => response.end(json));
        } else response.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) }).end(json);
      },
      async (url) => {
        const result = await runLoad(options(url, 1000));
        assert.equal(result.answered, 1000);
        assert.ok(result.seconds > 0);
      },
    );
    assert.equal(seen.requests, 1000);
    assert.deepEqual(seen.bad, []);
    assert.equal(seen.sockets.size, 8, 'keep-alive: one socket per connection');
  });

  it('fails on an answer with another status, without Content-Length, or on a connection the server closes', async () => {
    let n = 0;
    await withServer(
      (_request, response) => {
        n++;
        response.writeHead(n === 50 ? 500 : 202, { 'content-length': 2 }).end('{}');
      },
      async (url) => await assert.rejects(runLoad(options(url, 200)), /answer 500 instead of 202/),
    );
    await withServer(
      (_request, response) => {
        response.writeHead(202, { 'transfer-encoding': 'chunked' });
        response.end('{}');
      },
      async (url) => await assert.rejects(runLoad(options(url, 10)), /does not take/),
    );
    n = 0;
    await withServer(
      (request, response) => {
        n++;
        if (n === 20) request.socket.destroy();
        else response.writeHead(202, { 'content-length': 2 }).end('{}');
      },
      async (url) => await assert.rejects(runLoad(options(url, 100)), /closed a connection|answered/),
    );
  });
});
