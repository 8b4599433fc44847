/**
 * Crash recovery of async invocations with a real server process: 500 queued, SIGKILL in the middle, restart.
 * Every invocation ends succeeded or failed with the documented reason; none vanish; none runs twice (counted from
 * the server's "invocation started" log lines of both runs and the store's attempt counter); resubmitting every
 * Idempotency-Key after the restart returns the same invocations and runs nothing again.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { IMAGES_DIR, sandboxUnavailableReason, waitFor } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const COUNT = 500;

interface Started {
  child: ChildProcess;
  url: string;
  /** Invocation ids from "invocation started" log lines. */
  starts: string[];
}

async function startServerProcess(dataDir: string): Promise<Started> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data-dir', dataDir, '--images-dir', IMAGES_DIR, '--executor', 'sandbox', '--async-concurrency', '8', '--log-level', 'info', '--prewarm', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const starts: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      let entry: { msg?: string; url?: string; invocationId?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return;
      }
      if (entry.msg === 'invocation started' && entry.invocationId) starts.push(entry.invocationId);
      if (entry.msg === 'Kindling is listening' && entry.url) resolve(entry.url);
    });
    child.once('exit', (code) => reject(new Error(`the server exited with ${code} before listening`)));
  });
  return { child, url, starts };
}

async function stopProcess(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

interface View {
  id: string;
  status: string;
  error?: string;
}

describe('async invocations survive kill -9', { skip: unavailable ?? false }, () => {
  it(`${COUNT} queued, SIGKILL in the middle, restart: each ends succeeded or failed-with-reason, once`, { timeout: 600_000 }, async () => {
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), 'kindling-crash-')));
    await chmod(dataDir, 0o755);
    let server: Started | null = null;
    try {
      server = await startServerProcess(dataDir);
      const first = server;
      const put = await fetch(`${first.url}/v1/functions/mark`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command: ['cat'] }) });
      assert.ok(put.ok);
      const ids = new Map<string, string>(); // key -> invocation id
      for (let i = 0; i < COUNT; i += 50) {
        await Promise.all(
          Array.from({ length: 50 }, async (_, j) => {
            const key = `job-${i + j}`;
            const response = await fetch(`${first.url}/v1/functions/mark/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true', 'idempotency-key': key }, body: key });
            assert.equal(response.status, 202);
            ids.set(key, ((await response.json()) as { invocationId: string }).invocationId);
          }),
        );
      }
      assert.equal(ids.size, COUNT);
      // Kill it while some have run and many are still queued.
      await waitFor(async () => first.starts.length >= 40, 120_000, 'some invocations to start');
      await stopProcess(first.child, 'SIGKILL');
      const startedBefore = [...first.starts];
      assert.ok(startedBefore.length < COUNT, 'the kill came before the end');

      server = await startServerProcess(dataDir);
      const second = server;
      const all = async (): Promise<View[]> => ((await (await fetch(`${second.url}/v1/invocations?function=mark&limit=1000`)).json()) as { invocations: View[] }).invocations;
      await waitFor(async () => (await all()).every((v) => v.status === 'succeeded' || v.status === 'failed'), 300_000, 'every invocation to finish');
      const views = await all();
      assert.equal(views.length, COUNT, 'none vanished');
      const failed = views.filter((v) => v.status === 'failed');
      for (const view of failed) assert.equal(view.error, 'server stopped during the run');
      // Each ran at most once across both lives of the server; the succeeded ones exactly once.
      const starts = [...startedBefore, ...second.starts];
      const counts = new Map<string, number>();
      for (const id of starts) counts.set(id, (counts.get(id) ?? 0) + 1);
      for (const [id, n] of counts) assert.equal(n, 1, `${id} started ${n} times`);
      for (const view of views) if (view.status === 'succeeded') assert.equal(counts.get(view.id), 1);
      // A succeeded one's output is its own payload.
      for (const [key, id] of [...ids].slice(0, 500).filter((_, i) => i % 25 === 0)) {
        const view = views.find((v) => v.id === id)!;
        if (view.status === 'succeeded') assert.equal(await (await fetch(`${second.url}/v1/invocations/${id}/output`)).text(), key);
      }
      // Clients retrying with the same keys get the same invocations; nothing runs again.
      const startsAfterRecovery = second.starts.length;
      for (const [key, id] of ids) {
        const response = await fetch(`${second.url}/v1/functions/mark/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true', 'idempotency-key': key }, body: key });
        assert.equal(((await response.json()) as { invocationId: string }).invocationId, id);
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(second.starts.length, startsAfterRecovery);
      process.stdout.write(`# crash test: ${startedBefore.length} started before the kill, ${failed.length} marked failed (running at the kill), ${views.length - failed.length} succeeded\n`);
    } finally {
      if (server) await stopProcess(server.child, 'SIGTERM');
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
