/**
 * Persistent sandboxes (issue 16, first slice) on the sandbox executor: create -> first command output, a command's
 * round trip on a live sandbox, pause and resume, each next to plain bubblewrap (a fresh `bwrap` per command, the same
 * rootfs) or the API's own floor (a GET of the sandbox), measured in the same run, alternated.
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { timedSpawnOk } from './lib/proc.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, quantile, summarize } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const ROOTFS_BASE = join('/var/lib/kindling/images', 'base', 'rootfs');

const ROWS = [
  { id: 'sandboxes.create_first_output', scenario: 'Create a persistent sandbox -> first command output (`echo hi`)', target: 'p50 < 20 ms / p99 < 40 ms (issue 16)' },
  { id: 'sandboxes.command_rtt', scenario: 'Command round trip on a live sandbox (`true`)', target: 'p50 < 5 ms (issue 16)' },
  { id: 'sandboxes.pause', scenario: 'Pause (cgroup freezer) via API', target: 'p50 < 5 ms (issue 16)' },
  { id: 'sandboxes.resume', scenario: 'Resume via API', target: 'p50 < 5 ms (issue 16)' },
  { id: 'sandboxes.port_get', scenario: 'Proxied GET round trip to a port in the sandbox (`python3 -m http.server`, 1 KiB file)', target: 'measured (no target in issue 16)' },
] as const;

const bwrap = (command: string[]) =>
  timedSpawnOk('bwrap', ['--ro-bind', ROOTFS_BASE, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '--die-with-parent', ...command], { env: CLEAN_ENV });

const stats = (samples: number[]): { p50: number; p99: number; text: string } => {
  const sorted = [...samples].sort((a, b) => a - b);
  const p50 = quantile(sorted, 0.5);
  const p99 = quantile(sorted, 0.99);
  return { p50, p99, text: `p50 ${fmtMs(p50)}, p99 ${fmtMs(p99)} (n=${samples.length})` };
};

class Api {
  constructor(readonly url: string) {}
  async call(method: string, path: string, body?: unknown): Promise<{ ms: number; status: number; json: Record<string, unknown> }> {
    const started = performance.now();
    const response = await fetch(this.url + path, { method, ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }) });
    const text = await response.text();
    const ms = performance.now() - started;
    if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 300)}`);
    return { ms, status: response.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  }
}

/** A GET's round trip (the body read) in ms; throws unless 200 with `expected` bytes. */
async function timedGet(url: string, expected: number): Promise<number> {
  const started = performance.now();
  const response = await fetch(url);
  const body = await response.arrayBuffer();
  const ms = performance.now() - started;
  if (response.status !== 200 || body.byteLength !== expected) throw new Error(`GET ${url} answered ${response.status} with ${body.byteLength} bytes`);
  return ms;
}

async function pollUntil(what: string, probe: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * `python3 -m http.server` serving a 1 KiB file inside a kindling/python sandbox, fetched through
 * /v1/sandboxes/ID/ports/PORT/f; the baseline is the same server program on the host's loopback, fetched directly.
 */
async function measurePortGet(api: Api, runs: number, ctx: BenchContext): Promise<{ row: Row; data: unknown }> {
  const row = ROWS[4];
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { spawn } = await import('node:child_process');
  const made = await api.call('POST', '/v1/sandboxes', { runtime: 'python', idleTimeoutMs: 3_600_000 });
  const id = made.json.id as string;
  const dir = await mkdtemp(join(tmpdir(), 'kindling-bench-port-'));
  const body = 'x'.repeat(1024);
  await writeFile(join(dir, 'f'), body);
  const hostPort = 20_000 + Math.floor(Math.random() * 20_000);
  const host = spawn('python3', ['-m', 'http.server', String(hostPort), '--bind', '127.0.0.1', '--directory', dir], { stdio: 'ignore', env: CLEAN_ENV });
  try {
    await api.call('POST', `/v1/sandboxes/${id}/commands`, { command: ['sh', '-c', `printf %s '${body}' > /work/f && cd /work && python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &`] });
    const proxied = `${api.url}/v1/sandboxes/${id}/ports/8000/f`;
    const direct = `http://127.0.0.1:${hostPort}/f`;
    await pollUntil('the server in the sandbox answers', async () => (await timedGet(proxied, 1024)) >= 0);
    await pollUntil('the server on the host answers', async () => (await timedGet(direct, 1024)) >= 0);
    for (let i = 0; i < 5; i++) {
      await timedGet(proxied, 1024);
      await timedGet(direct, 1024);
    }
    ctx.log(`sandboxes: proxied port GET, ${runs} runs (direct loopback GET alternated)`);
    const viaProxy: number[] = [];
    const viaLoopback: number[] = [];
    for (let i = 0; i < runs; i++) {
      viaProxy.push(await timedGet(proxied, 1024));
      viaLoopback.push(await timedGet(direct, 1024));
    }
    const p = stats(viaProxy);
    const d = stats(viaLoopback);
    return {
      row: { group: 'sandboxes', id: row.id, scenario: `${row.scenario}, n=${runs}`, target: row.target, kindling: p.text, baseline: `the same server on the host's loopback, fetched directly: ${d.text}`, ratio: fmtRatio(p.p50 / d.p50), status: 'info', note: 'API auth + a kindling-port helper per request (fork+exec, setns, connect) + one more hop each way' },
      data: { proxied: viaProxy, direct: viaLoopback },
    };
  } finally {
    host.kill('SIGKILL');
    await api.call('DELETE', `/v1/sandboxes/${id}`).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runPersistentGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runsOverridden ? ctx.runs.sandbox : 30;
  const skipAll = (reason: string): GroupResult => ({ rows: ROWS.map((row) => skippedRow('sandboxes', row.id, row.scenario, row.target, reason)), data: { skipped: reason } });
  try {
    await access(ROOTFS_BASE);
  } catch {
    return skipAll(`no rootfs at ${ROOTFS_BASE}`);
  }
  let server: BenchServer;
  try {
    server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--max-sandboxes-per-tenant', '1000'] });
  } catch (error) {
    return skipAll(`server --executor sandbox did not start: ${error instanceof Error ? error.message : String(error)}`.slice(0, 200));
  }
  const api = new Api(server.url);
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  try {
    // Warm-up: one sandbox made and deleted, a few plain bwraps.
    const warm = await api.call('POST', '/v1/sandboxes', { image: 'kindling/base' });
    await api.call('DELETE', `/v1/sandboxes/${warm.json.id as string}`);
    for (let i = 0; i < 3; i++) await bwrap(['true']);

    ctx.log(`sandboxes: create -> first output, ${n} runs (plain bwrap echo alternated)`);
    const created: number[] = [];
    const plainEcho: number[] = [];
    for (let i = 0; i < n; i++) {
      const started = performance.now();
      const made = await api.call('POST', '/v1/sandboxes', { image: 'kindling/base' });
      const id = made.json.id as string;
      const echo = await api.call('POST', `/v1/sandboxes/${id}/commands`, { command: ['echo', 'hi'] });
      if (echo.json.stdout !== 'hi\n') throw new Error(`echo printed ${JSON.stringify(echo.json.stdout)}`);
      created.push(performance.now() - started);
      await api.call('DELETE', `/v1/sandboxes/${id}`);
      plainEcho.push((await bwrap(['echo', 'hi'])).ms);
    }
    const c = stats(created);
    const pe = stats(plainEcho);
    rows.push({ group: 'sandboxes', id: ROWS[0].id, scenario: `${ROWS[0].scenario}, n=${n}`, target: ROWS[0].target, kindling: c.text, baseline: `plain bwrap \`echo hi\` (fresh): ${pe.text}`, ratio: fmtRatio(c.p50 / pe.p50), status: c.p50 < 20 && c.p99 < 40 ? 'pass' : 'fail', note: 'two HTTP calls (create, command); the delete is outside the clock' });
    data[ROWS[0].id] = { api: created, bwrap: plainEcho };

    const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', idleTimeoutMs: 3_600_000 })).json.id as string;
    ctx.log(`sandboxes: command round trip, ${n * 2} runs (plain bwrap true alternated)`);
    const rtt: number[] = [];
    const plainTrue: number[] = [];
    for (let i = 0; i < n * 2; i++) {
      rtt.push((await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['true'] })).ms);
      plainTrue.push((await bwrap(['true'])).ms);
    }
    const r = stats(rtt);
    const pt = stats(plainTrue);
    rows.push({ group: 'sandboxes', id: ROWS[1].id, scenario: `${ROWS[1].scenario}, n=${n * 2}`, target: ROWS[1].target, kindling: r.text, baseline: `plain bwrap \`true\` (a fresh sandbox each): ${pt.text}`, ratio: fmtRatio(r.p50 / pt.p50), status: r.p50 < 5 ? 'pass' : 'fail', note: 'HTTP + a FIFO set + the supervisor forking `sh run` + exec' });
    data[ROWS[1].id] = { api: rtt, bwrap: plainTrue };

    ctx.log(`sandboxes: pause/resume, ${n * 2} runs each (GET of the sandbox alternated: the HTTP floor)`);
    await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', 'while :; do :; done >/dev/null 2>&1 &'] });
    const pauses: number[] = [];
    const resumes: number[] = [];
    const gets: number[] = [];
    for (let i = 0; i < n * 2; i++) {
      const p = await api.call('POST', `/v1/sandboxes/${sb}/pause`, {});
      if (p.json.state !== 'paused') throw new Error('not paused');
      pauses.push(p.ms);
      gets.push((await api.call('GET', `/v1/sandboxes/${sb}`)).ms);
      const q = await api.call('POST', `/v1/sandboxes/${sb}/resume`, {});
      if (q.json.state !== 'running') throw new Error('not running');
      resumes.push(q.ms);
    }
    await api.call('DELETE', `/v1/sandboxes/${sb}`);
    const ps = stats(pauses);
    const rs = stats(resumes);
    const g = stats(gets);
    const floor = `GET /v1/sandboxes/ID (HTTP floor): ${g.text}`;
    rows.push({ group: 'sandboxes', id: ROWS[2].id, scenario: `${ROWS[2].scenario}, a busy loop inside, n=${n * 2}`, target: ROWS[2].target, kindling: ps.text, baseline: floor, ratio: fmtRatio(ps.p50 / g.p50), status: ps.p50 < 5 ? 'pass' : 'fail', note: 'resolves once the kernel reports the cgroup frozen' });
    rows.push({ group: 'sandboxes', id: ROWS[3].id, scenario: `${ROWS[3].scenario}, n=${n * 2}`, target: ROWS[3].target, kindling: rs.text, baseline: floor, ratio: fmtRatio(rs.p50 / g.p50), status: rs.p50 < 5 ? 'pass' : 'fail' });
    data['sandboxes.pause_resume'] = { pause: pauses, resume: resumes, get: gets, summary: { pause: summarize(pauses), resume: summarize(resumes), get: summarize(gets) } };

    // --- ports: a proxied GET vs the same server on the host's loopback, alternated -------------------------------
    const portRow = await measurePortGet(api, n * 2, ctx);
    rows.push(portRow.row);
    data[ROWS[4].id] = portRow.data;
    return { rows, data };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`sandboxes group failed: ${message}`);
    const done = new Set(rows.map((row) => row.id));
    for (const row of ROWS) {
      if (!done.has(row.id)) rows.push({ group: 'sandboxes', id: row.id, scenario: row.scenario, target: row.target, kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', status: 'error' });
    }
    return { rows, data: { ...data, error: message } };
  } finally {
    await server.stop();
  }
}
