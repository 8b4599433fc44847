/**
 * The splice relay (native/kindling-splice.c + src/api/stream-relay.ts): large uploads with a declared length and
 * outputs past the first MiB move between the client's socket and the sandbox without passing through node. Real
 * sandboxes, real sockets: byte-exact both ways, the relay's metrics prove it was used, the connection rules
 * (close after a relayed upload, keep-alive after a relayed output), a program that stops reading early, clients that
 * go away in either direction (the sandbox and the helper go too), and the same requests with the relay off.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_STREAM_RELAY_PATH } from '../src/server.js';
import { sample } from './helpers/prom-text.js';
import { streamRandom } from './helpers/stream-client.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const MiB = 1024 * 1024;
const sandboxMissing = await sandboxUnavailableReason();
const python3Missing = await new Promise<string | null>((resolve) =>
  spawn('python3', ['-c', 'pass'], { stdio: 'ignore' })
    .once('error', () => resolve('python3 is not installed (scripts/setup.sh installs it): it sends the TCP urgent byte'))
    .once('close', (code) => resolve(code === 0 ? null : 'python3 does not run')),
);
const helperMissing = await readFile(DEFAULT_STREAM_RELAY_PATH).then(
  () => null,
  () => `${DEFAULT_STREAM_RELAY_PATH} is not built (npm run build needs a C compiler: scripts/setup.sh installs gcc)`,
);

async function deploy(url: string, name: string, body: object): Promise<void> {
  const response = await fetch(`${url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  assert.ok(response.ok, await response.text());
}

/** kindling_stream_relay_bytes_total by direction. */
async function relayed(url: string): Promise<{ in: number; out: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (direction: string): number => sample(text, 'kindling_stream_relay_bytes_total', { direction });
  return { in: value('in'), out: value('out') };
}

/** kindling-splice processes whose parent is this test process (the server runs in it). */
async function helpersRunning(): Promise<number> {
  let count = 0;
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const match = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
    if (match?.[1] === 'kindling-splice' && Number(match[2]) === process.pid) count++;
  }
  return count;
}

describe('stream relay (sandbox executor)', { skip: sandboxMissing ?? helperMissing ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxStreamBytes: 512 * MiB });
    await deploy(server.url, 'cat', { image: 'kindling/base', command: ['cat'], timeoutMs: 120_000 });
    await deploy(server.url, 'head', { image: 'kindling/base', command: ['sh', '-c', 'head -c 10 >/dev/null; echo read-ten'], timeoutMs: 120_000 });
    await deploy(server.url, 'zeros', { image: 'kindling/base', command: ['sh', '-c', 'cat /dev/zero'], maxConcurrency: 1, maxQueued: 0, timeoutMs: 120_000 });
    await deploy(server.url, 'slow', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1, maxQueued: 0, timeoutMs: 120_000 });
  });
  after(async () => {
    await server?.stop();
  });

  it('a 100 MiB upload with a declared length and its output go around node, byte-exact', { timeout: 120_000 }, async () => {
    const before = await relayed(server.url);
    const agent = new Agent({ keepAlive: true });
    const answer = await streamRandom(server.url, '/v1/functions/cat/invoke', 100 * MiB, { contentLength: true, agent }).finally(() => agent.destroy());
    assert.equal(answer.status, 200);
    assert.equal(answer.gotBytes, 100 * MiB);
    assert.equal(answer.gotHash, answer.sentHash);
    assert.equal(answer.headers['x-kindling-output'], 'streamed');
    assert.equal(answer.trailers['x-kindling-exit-code'], '0');
    // The parser never saw the end of a relayed body: the connection is not reused (the client asked to keep it).
    assert.equal(answer.headers.connection, 'close');
    const now = await relayed(server.url);
    // Every byte of the body went through the helper (node only read what came with the headers).
    assert.ok(now.in - before.in > 99 * MiB, `relayed in: ${now.in - before.in}`);
    // The first MiB of output is answered by node (headers or not); the rest went through the helper.
    // (node may hold a few MiB more while the client reads what it wrote.)
    assert.ok(now.out - before.out > 50 * MiB && now.out - before.out <= 100 * MiB, `relayed out: ${now.out - before.out}`);
    await waitFor(async () => (await helpersRunning()) === 0, 5000, 'the helpers to exit');
  });

  it('a chunked upload stays in node, its large output is relayed, and the connection is reused', { timeout: 120_000 }, async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const before = await relayed(server.url);
      const first = await streamRandom(server.url, '/v1/functions/cat/invoke', 20 * MiB, { agent });
      const second = await streamRandom(server.url, '/v1/functions/cat/invoke', 20 * MiB, { agent });
      for (const answer of [first, second]) {
        assert.equal(answer.status, 200);
        assert.equal(answer.gotHash, answer.sentHash);
        assert.equal(answer.trailers['x-kindling-exit-code'], '0');
      }
      assert.equal(second.reusedSocket, true, 'the keep-alive connection carried the second call');
      const now = await relayed(server.url);
      assert.equal(now.in - before.in, 0, 'a chunked body is read by node');
      assert.ok(now.out - before.out > 30 * MiB, `relayed out: ${now.out - before.out}`);
    } finally {
      agent.destroy();
    }
  });

  it('a program that reads 10 bytes of a 50 MiB upload answers normally', { timeout: 60_000 }, async () => {
    const answer = await streamRandom(server.url, '/v1/functions/head/invoke', 50 * MiB, { contentLength: true });
    assert.equal(answer.status, 200);
    assert.equal(answer.body.toString(), 'read-ten\n');
    assert.equal(answer.headers['x-kindling-exit-code'], '0');
    const id = String(answer.headers['x-kindling-invocation-id']);
    const record = (await (await fetch(`${server.url}/v1/invocations/${id}`)).json()) as { status: string; payloadBytes: number };
    assert.equal(record.status, 'succeeded');
    // What the program took, not what the client sent (the rest was read and dropped).
    assert.ok(record.payloadBytes < 50 * MiB, `payloadBytes ${record.payloadBytes}`);
    await waitFor(async () => (await helpersRunning()) === 0, 10_000, 'the upload helper to finish dropping the rest');
  });

  it('a client that goes away mid-upload frees the sandbox and the helper', { timeout: 60_000 }, async () => {
    const port = new URL(server.url).port;
    const req = request({ host: '127.0.0.1', port, path: '/v1/functions/slow/invoke', method: 'POST', agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': 100 * MiB } });
    req.on('error', () => undefined);
    req.write(randomBytes(8 * MiB));
    await waitFor(async () => (await helpersRunning()) >= 1, 10_000, 'the upload helper to start');
    assert.equal((await fetch(`${server.url}/v1/functions/slow/invoke`, { method: 'POST', body: 'x' })).status, 429, 'the one slot is taken');
    req.destroy();
    await waitFor(async () => (await fetch(`${server.url}/v1/functions/slow/invoke`, { method: 'POST', body: 'x' })).status === 200, 20_000, 'the slot to be freed');
    await waitFor(async () => (await helpersRunning()) === 0, 10_000, 'the helper to exit');
  });

  it('a client that goes away mid-download ends the execution and the helper', { timeout: 60_000 }, async () => {
    const port = new URL(server.url).port;
    let got = 0;
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/v1/functions/zeros/invoke', method: 'POST', agent: false }, (res) => {
        res.on('data', (chunk: Buffer) => {
          got += chunk.length;
          if (got > 64 * MiB) {
            req.destroy();
            resolve();
          }
        });
        res.on('error', () => undefined);
      });
      req.on('error', (error) => (got > 64 * MiB ? undefined : reject(error)));
      req.end('x');
    });
    // The output went through the helper (it is endless: only a relay moving it explains 64 MiB so soon).
    await waitFor(async () => (await fetch(`${server.url}/v1/invocations?function=zeros&status=failed&limit=1`).then((r) => r.json() as Promise<{ invocations: unknown[] }>)).invocations.length === 1, 20_000, 'the invocation to end failed');
    await waitFor(async () => (await helpersRunning()) === 0, 10_000, 'the helper to exit');
    assert.ok((await relayed(server.url)).out > 0);
  });

  it('/v1/execute raw mode relays a 64 MiB body and its raw output', { timeout: 60_000 }, async () => {
    const spec = JSON.stringify({ image: 'kindling/base', command: ['cat'] });
    const before = await relayed(server.url);
    const raw = await streamRandom(server.url, '/v1/execute', 64 * MiB, { contentLength: true, headers: { 'x-kindling-spec': spec, accept: 'application/octet-stream' } });
    assert.equal(raw.status, 200);
    assert.equal(raw.gotHash, raw.sentHash);
    assert.equal(raw.trailers['x-kindling-exit-code'], '0');
    const json = await streamRandom(server.url, '/v1/execute', 64 * MiB, { contentLength: true, headers: { 'x-kindling-spec': JSON.stringify({ image: 'kindling/base', command: ['wc', '-c'] }) } });
    assert.equal(json.status, 200);
    const result = JSON.parse(json.body.toString()) as { exitCode: number; stdout: string };
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout.trim(), String(64 * MiB));
    const now = await relayed(server.url);
    assert.ok(now.in - before.in > 127 * MiB, `relayed in: ${now.in - before.in}`);
    // (how much node sends before the helper takes over depends on how fast this in-process client reads)
    assert.ok(now.out - before.out > 16 * MiB, `relayed out: ${now.out - before.out}`);
  });
});

/** Writes raw bytes on one connection and returns everything the server sends until it closes. */
async function rawExchange(url: string, write: (socket: Socket) => Promise<void>, timeoutMs = 30_000): Promise<Buffer> {
  const { connect } = await import('node:net');
  const target = new URL(url);
  const socket = connect(Number(target.port), target.hostname);
  await new Promise((resolve) => socket.once('connect', resolve));
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => undefined);
  await write(socket);
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks);
}

describe('stream relay: connections and odd clients', { skip: sandboxMissing ?? helperMissing ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxStreamBytes: 512 * MiB });
    await deploy(server.url, 'ignore', { image: 'kindling/base', command: ['sh', '-c', 'echo ignored'] });
    await deploy(server.url, 'late', { image: 'kindling/base', command: ['sh', '-c', 'sleep 1; head -c 3000000 /dev/zero'] });
    await deploy(server.url, 'count', { image: 'kindling/base', command: ['wc', '-c'] });
    await deploy(server.url, 'two', { image: 'kindling/base', command: ['head', '-c', String(2 * MiB), '/dev/zero'] });
  });
  after(async () => {
    await server?.stop();
  });

  it('an unread body of a client that stalls does not keep a helper after the answer', { timeout: 60_000 }, async () => {
    const { connect } = await import('node:net');
    const target = new URL(server.url);
    // allowHalfOpen: a client that does not close when the server does (most do, which ends the helper at once).
    const socket = connect({ port: Number(target.port), host: target.hostname, allowHalfOpen: true });
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(`POST /v1/functions/ignore/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: ${16 * MiB}\r\n\r\n`);
    socket.write(randomBytes(256 * 1024));
    // The program does not read; the answer comes while the client still owes 15.75 MiB and sends nothing more.
    await waitFor(async () => answer.includes('ignored'), 20_000, 'the answer');
    const answeredAt = performance.now();
    assert.match(answer, /^HTTP\/1\.1 200/);
    assert.match(answer, /connection: close/i);
    // A byte now and then: never idle long enough for the helper's own idle limit.
    const trickle = setInterval(() => socket.write('x'), 200);
    try {
      // The helper drops the rest for a grace period (5 s), then it is stopped and the connection closed.
      await closed;
    } finally {
      clearInterval(trickle);
    }
    const afterMs = performance.now() - answeredAt;
    assert.ok(afterMs > 3000 && afterMs < 15_000, `closed ${afterMs.toFixed(0)} ms after the answer`);
    assert.equal(await helpersRunning(), 0);
  });

  it('a relayed upload pipelined behind a relayed output is read by node, not by two readers', { timeout: 60_000 }, async () => {
    const bodyBytes = 5 * MiB;
    const wire = await rawExchange(server.url, async (socket) => {
      socket.write('POST /v1/functions/late/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n');
      socket.write(`POST /v1/functions/count/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: ${bodyBytes}\r\n\r\n`);
      // The second body arrives over ~1 s, while the first answer streams.
      for (let sent = 0; sent < bodyBytes; sent += 512 * 1024) {
        socket.write(Buffer.alloc(512 * 1024, 0x61));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    });
    const text = wire.toString('latin1');
    assert.equal(text.match(/HTTP\/1\.1 200/g)?.length, 2, text.slice(0, 400));
    assert.ok(text.includes(`${bodyBytes}\n`), 'wc -c saw the whole second body');
  });

  it('an HTTP/1.0 client of a large output gets it without trailers, and the server stays up', { timeout: 60_000 }, async () => {
    const wire = await rawExchange(server.url, async (socket) => {
      socket.write('POST /v1/functions/two/invoke HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n');
    });
    const headerEnd = wire.indexOf('\r\n\r\n');
    const head = wire.subarray(0, headerEnd).toString('latin1');
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.doesNotMatch(head, /trailer:/i);
    assert.equal(wire.length - headerEnd - 4, 2 * MiB);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
  });
});

describe('stream relay off', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxStreamBytes: 512 * MiB, streamRelayPath: null });
    await deploy(server.url, 'cat', { image: 'kindling/base', command: ['cat'], timeoutMs: 120_000 });
  });
  after(async () => {
    await server?.stop();
  });

  it('the same 50 MiB round trip goes through node, byte-exact, with keep-alive', { timeout: 120_000 }, async () => {
    const agent = new Agent({ keepAlive: true });
    const answer = await streamRandom(server.url, '/v1/functions/cat/invoke', 50 * MiB, { contentLength: true, agent }).finally(() => agent.destroy());
    assert.equal(answer.status, 200);
    assert.equal(answer.gotHash, answer.sentHash);
    assert.equal(answer.trailers['x-kindling-exit-code'], '0');
    assert.equal(answer.headers.connection, 'keep-alive');
    assert.deepEqual(await relayed(server.url), { in: 0, out: 0 });
  });
});

/** The helper alone: HTTP/1.1 chunk framing, the gate, the exact count of an upload, bad arguments. */
describe('kindling-splice', { skip: helperMissing ?? false }, () => {
  /** A connected TCP pair on loopback. */
  async function socketPair(): Promise<[Socket, Socket]> {
    const listener = createServer();
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const port = (listener.address() as { port: number }).port;
    const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve));
    const { connect } = await import('node:net');
    const client = connect(port, '127.0.0.1');
    await new Promise((resolve) => client.once('connect', resolve));
    const server = await accepted;
    listener.close();
    return [client, server];
  }

  function collect(socket: Socket): Promise<Buffer> {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    return new Promise((resolve) => socket.once('end', () => resolve(Buffer.concat(chunks))));
  }

  it('out: frames stdout as HTTP/1.1 chunks once the gate closes', async () => {
    const [client, serverSide] = await socketPair();
    const received = collect(client);
    const child = spawn(DEFAULT_STREAM_RELAY_PATH, ['out', '5000'], { stdio: ['ignore', 'ignore', 'inherit', 'pipe', serverSide, 'pipe', 'pipe'] });
    const stdio = child.stdio as unknown as [null, null, null, NodeJS.WritableStream, null, NodeJS.ReadableStream, NodeJS.WritableStream];
    const payload = randomBytes(3 * MiB + 7);
    stdio[3].end(payload);
    // Nothing may be sent before the gate closes: node's own writes come first.
    await new Promise((resolve) => setTimeout(resolve, 200));
    serverSide.write('HEAD;');
    stdio[6].end();
    let report = '';
    stdio[5].on('data', (chunk: Buffer) => (report += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    serverSide.end();
    const wire = await received;
    assert.equal(code, 0);
    assert.equal(report.trim(), `sent ${payload.length}`);
    assert.equal(wire.subarray(0, 5).toString(), 'HEAD;');
    // Parse the chunks back.
    const parts: Buffer[] = [];
    let at = 5;
    while (at < wire.length) {
      const lineEnd = wire.indexOf('\r\n', at);
      const size = parseInt(wire.subarray(at, lineEnd).toString(), 16);
      assert.ok(size > 0, 'no terminating chunk: node writes it with the trailers');
      parts.push(wire.subarray(lineEnd + 2, lineEnd + 2 + size));
      assert.equal(wire.subarray(lineEnd + 2 + size, lineEnd + 4 + size).toString(), '\r\n');
      at = lineEnd + 4 + size;
    }
    assert.ok(Buffer.concat(parts).equals(payload));
    client.destroy();
  });

  it('in: head first, then exactly the declared bytes from the socket, no more', async () => {
    const [client, serverSide] = await socketPair();
    const child = spawn(DEFAULT_STREAM_RELAY_PATH, ['in', String(2 * MiB), '5000'], { stdio: ['ignore', 'ignore', 'inherit', serverSide, 'pipe', 'pipe', 'pipe'] });
    const stdio = child.stdio as unknown as [null, null, null, null, NodeJS.ReadableStream, NodeJS.ReadableStream, NodeJS.WritableStream];
    const chunks: Buffer[] = [];
    stdio[4].on('data', (chunk: Buffer) => chunks.push(chunk));
    let report = '';
    stdio[5].on('data', (chunk: Buffer) => (report += chunk.toString()));
    stdio[6].end('head-');
    const body = randomBytes(2 * MiB);
    client.write(body);
    // A pipelined next request must stay unread for whoever reads the socket next.
    client.write('NEXT');
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    assert.equal(code, 0);
    assert.equal(report.trim(), `delivered ${5 + 2 * MiB}`);
    assert.ok(Buffer.concat(chunks).equals(Buffer.concat([Buffer.from('head-'), body])));
    // spawn() paused the socket in this process: reading it again is explicit.
    const rest = await new Promise<Buffer>((resolve) => serverSide.once('data', resolve).resume());
    assert.equal(rest.toString(), 'NEXT');
    client.destroy();
    serverSide.destroy();
  });

  it('in: a client that ends early is reported (exit 2)', async () => {
    const [client, serverSide] = await socketPair();
    const child = spawn(DEFAULT_STREAM_RELAY_PATH, ['in', String(MiB), '5000'], { stdio: ['ignore', 'ignore', 'inherit', serverSide, 'pipe', 'pipe', 'pipe'] });
    const stdio = child.stdio as unknown as [null, null, null, null, NodeJS.ReadableStream, NodeJS.ReadableStream, NodeJS.WritableStream];
    stdio[4].resume();
    stdio[6].end();
    client.end(randomBytes(1000));
    assert.equal(await new Promise<number | null>((resolve) => child.once('close', resolve)), 2);
    serverSide.destroy();
  });

  it('in: TCP urgent data in the body neither stalls nor spins it', { skip: python3Missing ?? false, timeout: 30_000 }, async () => {
    // node cannot send MSG_OOB; python can. The helper must step over the urgent byte (as node's own reads do).
    const script = [
      'import json, os, resource, socket, subprocess, sys',
      'ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)',
      'c = socket.create_connection(ls.getsockname()); s, _ = ls.accept(); s.setblocking(False)',
      'out_r, out_w = os.pipe(); rep_r, rep_w = os.pipe(); head_r, head_w = os.pipe(); os.close(head_w)',
      'def fds():',
      '    os.dup2(s.fileno(), 3); os.dup2(out_w, 4); os.dup2(rep_w, 5); os.dup2(head_r, 6)',
      'p = subprocess.Popen([sys.argv[1], "in", "200000", "3000"], preexec_fn=fds, pass_fds=(3, 4, 5, 6))',
      'os.close(out_w); os.close(rep_w)',
      'c.sendall(b"a" * 100000); c.send(b"!", socket.MSG_OOB); c.sendall(b"b" * 100000)',
      'got = b""',
      'while True:',
      '    chunk = os.read(out_r, 65536)',
      '    if not chunk: break',
      '    got += chunk',
      'code = p.wait(); cpu = resource.getrusage(resource.RUSAGE_CHILDREN)',
      'print(json.dumps({"code": code, "bytes": len(got), "exact": got == b"a" * 100000 + b"b" * 100000, "cpu": cpu.ru_utime + cpu.ru_stime, "report": os.read(rep_r, 100).decode()}))',
    ].join('\n');
    const child = spawn('python3', ['-c', script, DEFAULT_STREAM_RELAY_PATH], { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await new Promise((resolve) => child.once('close', resolve));
    const result = JSON.parse(output) as { code: number; bytes: number; exact: boolean; cpu: number; report: string };
    assert.equal(result.code, 0);
    assert.equal(result.bytes, 200_000);
    assert.equal(result.exact, true, 'the body without its urgent byte, in order');
    assert.equal(result.report.trim(), 'delivered 200000');
    assert.ok(result.cpu < 0.5, `the helper used ${result.cpu} s of CPU`);
  });

  it('refuses bad arguments', async () => {
    for (const args of [[], ['in'], ['in', '-1', '5'], ['in', '10', '0'], ['out'], ['sideways', '1']]) {
      const child = spawn(DEFAULT_STREAM_RELAY_PATH, args, { stdio: 'ignore' });
      assert.equal(await new Promise<number | null>((resolve) => child.once('close', resolve)), 1, `args ${JSON.stringify(args)}`);
    }
  });
});
