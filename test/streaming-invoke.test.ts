/**
 * The raw invoke path streams both ways for command functions: byte-exact round trips of 0 B to 100 MiB on every
 * executor available here, headers for small outputs and trailers for streamed ones, 413 beyond --max-stream-bytes,
 * a client that aborts mid-upload frees the sandbox, and 1 GiB passes through a server process whose RSS stays low.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, realpath, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { streamRandom } from './helpers/stream-client.js';
import { dockerUnavailableReason, IMAGES_DIR, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const MiB = 1024 * 1024;
const sandboxMissing = await sandboxUnavailableReason();
const dockerMissing = await dockerUnavailableReason();
const executors = [
  { name: 'sandbox' as const, skip: sandboxMissing },
  { name: 'docker' as const, skip: dockerMissing },
];

async function deploy(url: string, name: string, body: object): Promise<void> {
  const response = await fetch(`${url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  assert.ok(response.ok, await response.text());
}

for (const executor of executors) {
  describe(`streaming invoke (${executor.name} executor)`, { skip: executor.skip ?? false }, () => {
    let server: TestServer;
    before(async () => {
      server = await startTestServer({ executor: executor.name, maxStreamBytes: 512 * MiB });
      await deploy(server.url, 'cat', { image: 'kindling/base', command: ['cat'], timeoutMs: 120_000 });
    });
    after(async () => {
      await server?.stop();
    });

    for (const size of [0, 1, MiB, 100 * MiB]) {
      it(`round-trips ${size} random bytes byte-exact`, { timeout: 180_000 }, async () => {
        const result = await streamRandom(server.url, '/v1/functions/cat/invoke', size);
        assert.equal(result.status, 200);
        assert.equal(result.gotBytes, size);
        assert.equal(result.gotHash, result.sentHash);
        if (size <= MiB) {
          // Small enough to buffer: every contract header, no trailers.
          assert.equal(result.headers['x-kindling-exit-code'], '0');
          assert.ok(Number(result.headers['x-kindling-duration-ms']) > 0);
          assert.match(String(result.headers['x-kindling-cold-start']), /^(true|false)$/);
          assert.ok(result.headers['x-kindling-invocation-id']);
        } else {
          // Streamed: what is known at the start in headers, the rest in trailers.
          assert.equal(result.headers['x-kindling-output'], 'streamed');
          assert.ok(result.headers['x-kindling-invocation-id']);
          assert.equal(result.trailers['x-kindling-exit-code'], '0');
          assert.ok(Number(result.trailers['x-kindling-duration-ms']) > 0);
        }
      });
    }
  });
}

describe('streaming invoke limits and aborts', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxStreamBytes: MiB });
    await deploy(server.url, 'cat', { image: 'kindling/base', command: ['cat'] });
    await deploy(server.url, 'single', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1, maxQueued: 0, timeoutMs: 120_000 });
  });
  after(async () => {
    await server?.stop();
  });

  it('413 beyond --max-stream-bytes (declared or streamed)', async () => {
    // The answer is 413, or a connection the server cut (it may close while the body is still being sent, or when the
    // output had started streaming first); never a 200 that ends well, and no other failure (a server that is gone).
    const refused = (answer: Awaited<ReturnType<typeof streamRandom>> | NodeJS.ErrnoException, what: string): void => {
      if (answer instanceof Error) assert.ok(answer.code === 'ECONNRESET' || answer.code === 'EPIPE', `${what}: ${answer.code} ${answer.message}`);
      else assert.equal(answer.status, 413, what);
    };
    refused(await streamRandom(server.url, '/v1/functions/cat/invoke', 2 * MiB, { contentLength: true }).catch((error: NodeJS.ErrnoException) => error), 'declared');
    refused(await streamRandom(server.url, '/v1/functions/cat/invoke', 4 * MiB).catch((error: NodeJS.ErrnoException) => error), 'streamed');
    const small = await streamRandom(server.url, '/v1/functions/cat/invoke', 1000);
    assert.equal(small.status, 200);
  });

  it('a client that aborts mid-upload frees the sandbox', { timeout: 60_000 }, async () => {
    const req = request({ host: '127.0.0.1', port: new URL(server.url).port, path: '/v1/functions/single/invoke', method: 'POST', agent: false, headers: { 'content-type': 'application/octet-stream' } });
    req.on('error', () => undefined);
    let answered: number | null = null;
    req.on('response', (res) => (answered = res.statusCode ?? 0));
    req.write(randomBytes(64 * 1024));
    // Let the upload take the slot before anyone else asks.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(answered, null, 'the upload is still running');
    // While it runs, the one slot is taken: another call gets 429.
    await waitFor(async () => (await fetch(`${server.url}/v1/functions/single/invoke`, { method: 'POST', body: 'x' })).status === 429, 20_000, 'the slot to be taken');
    req.destroy();
    await waitFor(async () => (await fetch(`${server.url}/v1/functions/single/invoke`, { method: 'POST', body: 'x' })).status === 200, 20_000, 'the slot to be freed');
  });
});

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  return kb * 1024;
}

describe('1 GiB through the platform', { skip: sandboxMissing ?? false }, () => {
  it('passes byte-exact while the server process stays under 200 MB RSS', { timeout: 600_000 }, async () => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), 'kindling-gib-')));
    await chmod(dataDir, 0o755);
    const cli = new URL('../../bin/kindling.js', import.meta.url).pathname;
    const child: ChildProcess = spawn(process.execPath, [cli, 'serve', '--port', '0', '--data-dir', dataDir, '--images-dir', IMAGES_DIR, '--executor', 'sandbox', '--log-level', 'info', '--prewarm', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on('line', (line) => {
          if (line.includes('Kindling is listening')) resolve((JSON.parse(line) as { url: string }).url);
        });
        child.once('exit', () => reject(new Error('the server exited')));
      });
      await deploy(url, 'cat', { image: 'kindling/base', command: ['cat'], timeoutMs: 600_000 });
      let peak = await rssBytes(child.pid!);
      const sampler = setInterval(() => {
        void rssBytes(child.pid!).then((rss) => (peak = Math.max(peak, rss)), () => undefined);
      }, 100);
      const started = performance.now();
      const result = await streamRandom(url, '/v1/functions/cat/invoke', 1024 * MiB).finally(() => clearInterval(sampler));
      const seconds = (performance.now() - started) / 1000;
      assert.equal(result.status, 200);
      assert.equal(result.gotBytes, 1024 * MiB);
      assert.equal(result.gotHash, result.sentHash);
      assert.equal(result.trailers['x-kindling-exit-code'], '0');
      process.stdout.write(`# 1 GiB in ${seconds.toFixed(1)} s (${(1024 / seconds).toFixed(0)} MiB/s), server peak RSS ${(peak / MiB).toFixed(0)} MiB\n`);
      assert.ok(peak < 200 * 1000 * 1000, `server RSS peaked at ${(peak / MiB).toFixed(0)} MiB`);
    } finally {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
