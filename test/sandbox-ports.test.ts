/**
 * Ports of persistent sandboxes (real bubblewrap, and the real Docker engine where it runs; a started server): a server started inside a sandbox answers
 * through /v1/sandboxes/ID/ports/PORT/... (GET and POST with streamed 5 MiB bodies, a WebSocket echo, a raw upgrade),
 * nothing listening is a quick 502, another tenant gets 404, a paused sandbox is resumed, the per-sandbox connection
 * cap and the idle timeout hold, the sandbox still has no network out, and no helper process or descriptor stays.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { readdirSync, readlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { Kindling, NotFoundError, RateLimitError, ServerError, type Sandbox } from '@kindling/sdk';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = { sandbox: await sandboxUnavailableReason(), docker: await dockerUnavailableReason() };
const ADMIN = 'admin-key-for-sandbox-ports-test-0123456';
const MIB5 = 5 * 1024 * 1024;
const MAX_CONNECTIONS = 4;
const IDLE_MS = 3000;
const CLI = new URL('../src/main.js', import.meta.url).pathname;

/**
 * The server run inside the sandbox (python3 of the kindling/python image, standard library only): GET /big answers
 * 5 MiB; POST echoes its (chunked or sized) body back chunked as it reads it; GET /info tells what it saw; an
 * `Upgrade: websocket` request becomes a WebSocket echo, any other upgrade a raw byte echo.
 */
const SERVER_PY = String.raw`
import base64, hashlib, struct, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *args): pass

    def do_GET(self):
        up = self.headers.get('Upgrade')
        if up and up.lower() == 'websocket': return self.websocket()
        if up: return self.raw_echo(up)
        if self.path.startswith('/big'):
            self.send_response(200); self.send_header('Content-Length', str(5 * 1024 * 1024)); self.end_headers()
            block = bytes(range(256)) * 256
            for _ in range(80): self.wfile.write(block)
            return
        seen = 'path=%s auth=%s prefix=%s host=%s' % (self.path, self.headers.get('Authorization'), self.headers.get('X-Forwarded-Prefix'), self.headers.get('Host'))
        body = seen.encode()
        self.send_response(218 if self.path.startswith('/teapot') else 200)
        self.send_header('Content-Type', 'text/plain'); self.send_header('Content-Length', str(len(body))); self.send_header('X-From-Sandbox', 'yes'); self.end_headers()
        self.wfile.write(body)

    def chunks(self):
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            while True:
                size = int(self.rfile.readline().split(b';')[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b''): pass
                    return
                yield self.rfile.read(size); self.rfile.readline()
        left = int(self.headers.get('Content-Length', '0'))
        while left > 0:
            piece = self.rfile.read(min(65536, left))
            if not piece: return
            left -= len(piece); yield piece

    def do_POST(self):
        self.send_response(200); self.send_header('Transfer-Encoding', 'chunked'); self.send_header('Content-Type', 'application/octet-stream'); self.end_headers()
        for piece in self.chunks():
            self.wfile.write(b'%x\r\n%s\r\n' % (len(piece), piece))
        self.wfile.write(b'0\r\n\r\n')

    def raw_echo(self, up):
        self.send_response(101); self.send_header('Upgrade', up); self.send_header('Connection', 'Upgrade'); self.end_headers(); self.wfile.flush()
        while True:
            data = self.connection.recv(65536)
            if not data: break
            self.connection.sendall(data)
        self.close_connection = True

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers['Sec-WebSocket-Key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest()).decode()
        self.send_response(101); self.send_header('Upgrade', 'websocket'); self.send_header('Connection', 'Upgrade'); self.send_header('Sec-WebSocket-Accept', accept); self.end_headers(); self.wfile.flush()
        r = self.rfile
        while True:
            head = r.read(2)
            if len(head) < 2: break
            op, n = head[0] & 15, head[1] & 127
            if n == 126: n = struct.unpack('>H', r.read(2))[0]
            elif n == 127: n = struct.unpack('>Q', r.read(8))[0]
            mask = r.read(4); data = bytearray(r.read(n))
            for i in range(n): data[i] ^= mask[i % 4]
            if op == 8:
                self.wfile.write(b'\x88\x00'); self.wfile.flush(); break
            size = struct.pack('>B', n) if n < 126 else (b'\x7e' + struct.pack('>H', n) if n < 65536 else b'\x7f' + struct.pack('>Q', n))
            self.wfile.write(bytes([0x80 | op]) + size + bytes(data)); self.wfile.flush()
        self.close_connection = True

ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
`;

/** Host pids of kindling-port helpers (every proxied connection has one). */
function helpers(): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((line) => /\/kindling-port /.test(line))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

/** This process's descriptors that are network namespaces (the server runs in this process). */
function netnsFds(): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('net:[')) count++;
    } catch {
      // closed meanwhile
    }
  }
  return count;
}

/** The raw HTTP exchange of an upgrade through the proxy: resolves with the socket once the 101 head arrived. */
function rawUpgrade(url: string, path: string, key: string): Promise<{ socket: Socket; head: string; rest: Buffer }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAuthorization: Bearer ${key}\r\nConnection: Upgrade\r\nUpgrade: kindling-echo\r\n\r\n`);
    });
    let got = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      resolve({ socket, head: got.subarray(0, end).toString('latin1'), rest: got.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed before an answer: ${got.toString('latin1').slice(0, 300)}`)));
  });
}

function readExactly(socket: Socket, bytes: number, start: Buffer = Buffer.alloc(0)): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = start;
    const check = (): void => {
      if (got.length < bytes) return;
      socket.off('data', onData);
      resolve(got);
    };
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      check();
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed after ${got.length} of ${bytes} bytes`)));
    check();
  });
}

// The same cases on each executor that reaches a sandbox's ports through its network namespace (see sandbox/ports.ts).
for (const executor of ['sandbox', 'docker'] as const) describe(`ports of persistent sandboxes (${executor} executor)`, { skip: unavailable[executor] ?? false, timeout: 120_000 }, () => {
  let server: TestServer;
  let a: Kindling;
  let b: Kindling;
  let keyA: string;
  let keyB: string;
  let sb: Sandbox;
  const fdsBefore = netnsFds();

  before(async () => {
    server = await startTestServer({ executor, adminKey: ADMIN, maxSandboxPortConnections: MAX_CONNECTIONS, sandboxPortIdleTimeoutMs: IDLE_MS });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    keyA = (await admin.tenants.create('ports-a')).apiKey;
    a = new Kindling({ url: server.url, apiKey: keyA });
    keyB = (await admin.tenants.create('ports-b')).apiKey;
    b = new Kindling({ url: server.url, apiKey: keyB });
    sb = await a.sandboxes.create({ runtime: 'python', executor, limits: { memoryMb: 256 } });
    assert.equal(sb.info.executor, executor);
    await sb.files.write('/work/srv.py', SERVER_PY);
    const started = await sb.commands.run(['sh', '-c', 'python3 /work/srv.py 8000 >/tmp/srv.log 2>&1 &']);
    assert.equal(started.exitCode, 0, started.stderr);
    // Observable state: the port answers.
    await waitFor(async () => {
      try {
        const response = await sb.fetch(8000, '/info');
        await response.arrayBuffer();
        return response.ok;
      } catch {
        return false;
      }
    }, 20_000, 'the server in the sandbox answers on port 8000');
  });
  after(async () => {
    await sb?.kill().catch(() => {});
    await server?.stop();
  });

  test('GET: status, headers, path and query pass on; the key does not; getHost names the route', async () => {
    assert.equal(sb.getHost(8000), `${server.url}/v1/sandboxes/${sb.id}/ports/8000`);
    const response = await sb.fetch(8000, '/teapot/x%20y?q=1&r=%2F');
    assert.equal(response.status, 218);
    assert.equal(response.headers.get('x-from-sandbox'), 'yes');
    assert.equal(await response.text(), `path=/teapot/x%20y?q=1&r=%2F auth=None prefix=/v1/sandboxes/${sb.id}/ports/8000 host=localhost:8000`);
    // Plain fetch with the key works the same (what getHost is for).
    const direct = await fetch(`${sb.getHost(8000)}/info`, { headers: { authorization: `Bearer ${keyA}` } });
    assert.equal(direct.status, 200);
    assert.match(await direct.text(), /^path=\/info /);
    // Without a key: 401 from the platform, before anything reaches the sandbox.
    assert.equal((await fetch(`${sb.getHost(8000)}/info`)).status, 401);
  });

  test('a 5 MiB answer streams out, and a streamed 5 MiB POST body streams in and back', async () => {
    const big = await sb.fetch(8000, '/big');
    const bytes = new Uint8Array(await big.arrayBuffer());
    assert.equal(bytes.length, MIB5);
    assert.equal(bytes[257], 1);

    const payload = Buffer.alloc(MIB5);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251;
    let offset = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (offset >= payload.length) return controller.close();
        controller.enqueue(payload.subarray(offset, offset + 256 * 1024));
        offset += 256 * 1024;
      },
    });
    const echoed = await sb.fetch(8000, '/echo', { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(echoed.status, 200);
    const back = Buffer.from(await echoed.arrayBuffer());
    assert.equal(back.length, MIB5);
    assert.equal(createHash('sha256').update(back).digest('hex'), createHash('sha256').update(payload).digest('hex'));
  });

  test('a WebSocket echo through the proxy, and a raw upgrade of another protocol', async () => {
    const ws = new WebSocket(`${sb.getHost(8000).replace(/^http/, 'ws')}/ws`, { headers: { authorization: `Bearer ${keyA}` } });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const echoes: string[] = [];
    const gotAll = new Promise<void>((resolve) => ws.on('message', (data) => echoes.push(String(data)) === 2 && resolve()));
    ws.send('hello');
    ws.send('x'.repeat(100_000));
    await gotAll;
    assert.deepEqual(echoes.map((text) => text.slice(0, 10)), ['hello', 'xxxxxxxxxx']);
    assert.equal(echoes[1]!.length, 100_000);
    await new Promise((resolve) => {
      ws.once('close', resolve);
      ws.close();
    });

    const { socket, head, rest } = await rawUpgrade(server.url, `/v1/sandboxes/${sb.id}/ports/8000/raw`, keyA);
    try {
      assert.match(head, /^HTTP\/1\.[01] 101 /);
      socket.write('ping-pong');
      assert.equal((await readExactly(socket, 9, rest)).toString(), 'ping-pong');
    } finally {
      socket.destroy();
    }
  });

  test('nothing listening: 502 SANDBOX_PORT_UNREACHABLE, quickly; bad ports: 400', async () => {
    const started = performance.now();
    const failure = await sb.fetch(8001, '/').then(
      () => assert.fail('no error'),
      (error: unknown) => error,
    );
    assert.ok(failure instanceof ServerError, String(failure));
    assert.equal(failure.code, 'SANDBOX_PORT_UNREACHABLE');
    assert.equal(failure.status, 502);
    assert.ok(performance.now() - started < 1000, `took ${performance.now() - started} ms`);
    for (const port of ['0', '70000', 'abc']) {
      const response = await fetch(`${server.url}/v1/sandboxes/${sb.id}/ports/${port}/`, { headers: { authorization: `Bearer ${keyA}` } });
      assert.equal(response.status, 400, `port ${port}`);
      await response.arrayBuffer();
    }
  });

  test("another tenant's sandbox is a 404, as an unknown one", async () => {
    await assert.rejects(b.sandboxes.fetchPort(sb.id, 8000, '/info'), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
    await assert.rejects(a.sandboxes.fetchPort('sb_nope', 8000, '/info'), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
    // An upgrade too.
    const { socket, head } = await rawUpgrade(server.url, `/v1/sandboxes/${sb.id}/ports/8000/raw`, keyB).catch((error: unknown) => ({ socket: null, head: String(error) }));
    socket?.destroy();
    assert.doesNotMatch(head, / 101 /);
  });

  test('the sandbox still has no network out: a connect to the host from inside fails', async () => {
    const listener: Server = createServer((socket) => socket.on('error', () => {}).end('host'));
    await new Promise<void>((resolve) => listener.listen(0, '0.0.0.0', resolve));
    try {
      const port = (listener.address() as { port: number }).port;
      const address = Object.values(networkInterfaces()).flat().find((info) => info !== undefined && info.family === 'IPv4' && !info.internal)?.address;
      const targets = [address, '127.0.0.1'].filter((x): x is string => x !== undefined);
      for (const host of targets) {
        // The host reaches its own listener at that address ...
        if (host !== '127.0.0.1') {
          const probe = connect(port, host);
          await new Promise((resolve, reject) => probe.once('connect', resolve).once('error', reject));
          probe.on('error', () => {}).destroy();
        }
        // ... the sandbox does not (127.0.0.1 inside is its own loopback, where nothing listens on that port).
        const result = await sb.commands.run(['python3', '-c', `import socket\ntry:\n  socket.create_connection(("${host}", ${port}), 3); print("connected")\nexcept OSError as e:\n  print("failed", e)`]);
        assert.match(result.stdout, /^failed/, `${host}: ${result.stdout}${result.stderr}`);
      }
    } finally {
      listener.close();
    }
  });

  test('a paused sandbox is resumed by a request to its port', async () => {
    await sb.pause();
    assert.equal((await sb.refresh()).state, 'paused');
    const response = await sb.fetch(8000, '/info');
    assert.equal(response.status, 200);
    await response.arrayBuffer();
    assert.equal((await sb.refresh()).state, 'running');
  });

  test('connections per sandbox are capped (429 SANDBOX_PORT_LIMIT), idle ones end, and each one leaves nothing behind', async () => {
    const base = helpers().length;
    const open = await Promise.all(Array.from({ length: MAX_CONNECTIONS }, () => rawUpgrade(server.url, `/v1/sandboxes/${sb.id}/ports/8000/raw`, keyA)));
    // Their ends are watched from the start (the idle timeout may pass while the rest of the test runs).
    const closed = open.map(({ socket }) => new Promise<void>((resolve) => socket.once('close', () => resolve())));
    assert.equal(helpers().length, base + MAX_CONNECTIONS);
    await assert.rejects(sb.fetch(8000, '/info'), (error: unknown) => error instanceof RateLimitError && error.code === 'SANDBOX_PORT_LIMIT');
    open[0]!.socket.destroy();
    await waitFor(async () => helpers().length === base + MAX_CONNECTIONS - 1, 5000, 'the closed connection\'s helper ends');
    const ok = await sb.fetch(8000, '/info');
    await ok.arrayBuffer();
    // The others stay idle: they end after the idle timeout (observed as their sockets closing).
    await Promise.all(closed);
    await waitFor(async () => helpers().length === base, 5000, 'no helper is left');
  });

  test('CLI: kindling sandbox port prints the URL, and --forward serves the port locally with the key', async () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', KINDLING_URL: server.url, KINDLING_API_KEY: keyA };
    // Not execFileSync: the server runs in this process and must answer meanwhile.
    const printed = (await promisify(execFile)('node', [CLI, 'sandbox', 'port', sb.id, '8000'], { env, encoding: 'utf8' })).stdout;
    assert.equal(printed, `${sb.getHost(8000)}\n`);
    const forward = spawn('node', [CLI, 'sandbox', 'port', sb.id, '8000', '--forward', '0'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const local = await new Promise<string>((resolve, reject) => {
        let out = '';
        forward.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const match = /forwarding (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
          if (match) resolve(match[1]!);
        });
        forward.once('exit', (code) => reject(new Error(`the forward exited (${code}): ${out}`)));
      });
      const response = await fetch(`${local}/via-forward?x=1`);
      assert.equal(response.status, 200);
      assert.match(await response.text(), /^path=\/via-forward\?x=1 auth=None /);
    } finally {
      forward.kill('SIGKILL');
    }
  });

  test('deleting the sandbox ends its connections and releases its namespace', async () => {
    const { socket } = await rawUpgrade(server.url, `/v1/sandboxes/${sb.id}/ports/8000/raw`, keyA);
    const closed = new Promise((resolve) => socket.once('close', resolve));
    assert.equal(netnsFds(), fdsBefore + 1);
    await sb.kill();
    await closed;
    await waitFor(async () => helpers().length === 0, 5000, 'no kindling-port process is left');
    assert.equal(netnsFds(), fdsBefore);
  });
});
