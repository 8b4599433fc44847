/**
 * Fault: the data dir's file system fills up. The server's data dir is a small tmpfs mounted by the test; it is filled
 * to the last byte, then deploy, async invoke and execute on docker (its run dirs live in the data dir) must answer 507
 * STORAGE_FULL (retryable), not 500, while the sandbox executor (its run files on a tmpfs of its own) keeps running
 * executions; the invocations accepted before must not be lost. Once space is freed everything works again and
 * `PRAGMA integrity_check` of the store says ok.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { open, mkdtemp, rm, rmdir, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { skipOrFail } from '../src/executors/test-support.js';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const run = promisify(execFile);
const unavailable = (await sandboxUnavailableReason()) ?? (process.getuid?.() === 0 ? null : skipOrFail('sandbox', 'mounting a tmpfs needs root'));

/** Writes zeros until the file system says ENOSPC; returns the bytes written. */
async function fill(path: string): Promise<number> {
  const file = await open(path, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  let written = 0;
  try {
    for (;;) {
      const { bytesWritten } = await file.write(chunk);
      written += bytesWritten;
      if (bytesWritten < chunk.length) break;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await file.close().catch(() => undefined);
  }
  // The last partial page: single bytes until nothing fits.
  const tail = await open(path, 'a');
  try {
    for (;;) {
      await tail.write(Buffer.alloc(1));
      written++;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await tail.close().catch(() => undefined);
  }
  return written;
}

interface ErrorBody {
  error: { code: string; message: string };
}

describe('full disk in the data dir', { skip: unavailable ?? false }, () => {
  it('answers 507 STORAGE_FULL while full, loses nothing, works again once space is freed', { timeout: 120_000 }, async () => {
    const mountPoint = await mkdtemp(join(tmpdir(), 'kindling-disk-'));
    await run('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=755', 'kindling-faults-disk', mountPoint]);
    let server: TestServer | null = null;
    try {
      // Docker too where it runs: its run dirs (code files, FIFOs) live in the data dir as well.
      const withDocker = (await dockerUnavailableReason()) === null;
      server = await startTestServer({ dataDir: mountPoint, executor: 'sandbox', enableExecutors: withDocker ? ['docker'] : [], prewarmPerShape: 0, asyncInvocations: { concurrency: 1 } });
      const url = server.url;
      const put = (name: string, spec: unknown): Promise<Response> => fetch(`${url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
      const execute = (executor = 'sandbox'): Promise<Response> =>
        fetch(`${url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', code: 'print(6*7)', executor }) });
      const invokeAsync = (name: string, body: string): Promise<Response> => fetch(`${url}/v1/functions/${name}/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true' }, body });
      assert.equal((await put('echo', { image: 'kindling/base', command: ['cat'] })).status, 201);
      assert.equal((await put('slow', { image: 'kindling/base', command: ['sh', '-c', 'sleep 1; cat'] })).status, 201);
      assert.equal((await execute()).status, 200);

      // Accepted before the disk fills: one runs while it is full, the others wait in the queue.
      const accepted: string[] = [];
      for (let i = 0; i < 4; i++) {
        const response = await invokeAsync('slow', `before-${i}`);
        assert.equal(response.status, 202);
        accepted.push(((await response.json()) as { invocationId: string }).invocationId);
      }
      const filler = join(mountPoint, 'filler');
      const filled = await fill(filler);
      assert.ok(filled > 1024 * 1024, `filled ${filled} bytes`);

      const answers: [string, Response][] = [
        ['deploy', await put('later', { image: 'kindling/base', command: ['cat'] })],
        ['async invoke', await invokeAsync('echo', 'x'.repeat(64 * 1024))],
        ...(withDocker ? [['execute on docker', await execute('docker')] as [string, Response]] : []),
      ];
      // The sandbox executor keeps its run files on a tmpfs of its own (docs/security.md §8), not in the data dir: a
      // full data dir does not stop its executions.
      const whileFull = await execute();
      assert.equal(whileFull.status, 200, 'a sandbox execution while the data dir is full');
      assert.equal(((await whileFull.json()) as { stdout: string }).stdout, '42\n');
      for (const [what, response] of answers) {
        const body = (await response.json()) as ErrorBody;
        assert.equal(response.status, 507, `${what}: ${JSON.stringify(body)}`);
        assert.equal(body.error.code, 'STORAGE_FULL', what);
        assert.match(body.error.message, /space/i, what);
      }
      // The server stays healthy while full.
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
      // Let the queued invocations meet the full disk (claiming and finishing write to the store).
      await new Promise((resolve) => setTimeout(resolve, 2500));

      await unlink(filler);
      const view = async (id: string): Promise<{ status: string; error?: string }> => (await (await fetch(`${url}/v1/invocations/${id}`)).json()) as { status: string; error?: string };
      await waitFor(async () => {
        for (const id of accepted) if (!['succeeded', 'failed'].includes((await view(id)).status)) return false;
        return true;
      }, 60_000, 'the invocations accepted before the disk filled to finish');
      for (const [i, id] of accepted.entries()) {
        assert.equal((await view(id)).status, 'succeeded', `invocation ${i} accepted before the disk filled`);
        assert.equal(await (await fetch(`${url}/v1/invocations/${id}/output`)).text(), `before-${i}`);
      }

      // Everything works again, without a restart.
      assert.equal((await put('later', { image: 'kindling/base', command: ['cat'] })).status, 201);
      for (const executor of withDocker ? ['sandbox', 'docker'] : ['sandbox']) {
        const response = await execute(executor);
        assert.equal(response.status, 200, executor);
        assert.equal(((await response.json()) as { stdout: string }).stdout, '42\n');
      }
      const again = await invokeAsync('later', 'after');
      assert.equal(again.status, 202);
      const id = ((await again.json()) as { invocationId: string }).invocationId;
      await waitFor(async () => (await view(id)).status === 'succeeded', 30_000, 'an invocation after the disk was freed');

      // Closed without removing the data dir: the store is checked below, then the tmpfs goes with its contents.
      const stopping = server;
      server = null;
      await stopping.close();
      const db = new Database(join(mountPoint, 'kindling.db'), { readonly: true });
      try {
        assert.equal((db.pragma('integrity_check', { simple: true }) as string), 'ok');
        const count = (db.prepare('SELECT count(*) AS n FROM invocations').get() as { n: number }).n;
        assert.equal(count, accepted.length + 1, 'every accepted invocation is in the store');
      } finally {
        db.close();
      }
    } finally {
      await server?.close().catch(() => undefined);
      await run('umount', ['-l', mountPoint]).catch(() => undefined);
      await rmdir(mountPoint).catch(() => rm(mountPoint, { recursive: true, force: true }));
    }
  });
});
