/**
 * Persistent sandboxes (issue 16, first slice) on the sandbox executor: create -> first command output, a command's
 * round trip on a live sandbox, pause and resume, each next to plain bubblewrap (a fresh `bwrap` per command, the same
 * rootfs) or the API's own floor (a GET of the sandbox), measured in the same run, alternated. Then snapshots of 10 and
 * 100 MiB of written files (next to `cp -a` of the same data on the same disk), forks of 1 and 10 (next to as many
 * overlay mounts of a lower dir) and a background command's start -> first log line (next to a plain bwrap echo).
 * Then 100 creates at once and fork 100 (next to 100 plain bwraps at once), a 100 MiB file written and read through
 * the API (next to the host's page cache) and paused sandboxes held up to 1,000 with their memory (next to one plain
 * bwrap holding a sleep).
 */
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
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
  // -- snapshots, forks, background commands (sbx-parity) --
  { id: 'sandboxes.snapshot_10mib', scenario: 'Snapshot of a sandbox with 10 MiB of written files (10 x 1 MiB)', target: '< 100 ms for 100 MiB (issue 16)' },
  { id: 'sandboxes.snapshot_100mib', scenario: 'Snapshot of a sandbox with 100 MiB of written files (100 x 1 MiB)', target: '< 100 ms (issue 16)' },
  { id: 'sandboxes.fork_1', scenario: 'Fork 1 (POST /fork {count: 1}: snapshot + 1 sandbox, ready)', target: '< 25 ms (issue 16)' },
  { id: 'sandboxes.fork_10', scenario: 'Fork 10 from one snapshot (POST /fork {count: 10}, all ready)', target: '100 forks < 1 s (issue 16): < 100 ms for 10 pro rata' },
  { id: 'sandboxes.background_first_log', scenario: 'Background command start -> its first log line (POST {background} + GET .../logs SSE)', target: 'none in issue 16; command round trip p50 < 5 ms as a guide' },
  // -- speed and density (sbx-speed) --
  { id: 'sandboxes.create_100', scenario: '100 creates at once (POST /v1/sandboxes x 100 in parallel, all answered = all ready)', target: '< 1 s wall (issue 16)' },
  { id: 'sandboxes.file_write_100mib', scenario: 'File write through the API (PUT .../files, 100 MiB)', target: '>= 300 MB/s (issue 16)' },
  { id: 'sandboxes.file_read_100mib', scenario: 'File read through the API (GET .../files, 100 MiB)', target: '>= 300 MB/s (issue 16)' },
  { id: 'sandboxes.fork_100', scenario: 'Fork 100 from one snapshot (POST /fork {count: 100}, all ready)', target: '< 1 s (issue 16)' },
  { id: 'sandboxes.paused_held', scenario: 'Idle paused sandboxes held (created, then paused; memory per paused sandbox)', target: '>= 1,000 (issue 16)' },
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
  const row = ROWS.find((r) => r.id === 'sandboxes.port_get')!;
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
    // Caps raised for the 100-at-once, fork-100 and paused-held rows (this bench's server only).
    server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--max-sandboxes-per-tenant', String(HELD_TARGET + 100), '--max-snapshots-per-tenant', '1000'] });
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
    rows.push({ group: 'sandboxes', id: ROWS[0].id, scenario: `${ROWS[0].scenario}, n=${n}`, target: ROWS[0].target, kindling: c.text, baseline: `plain bwrap \`echo hi\` (fresh): ${pe.text}`, ratio: fmtRatio(c.p50 / pe.p50), status: c.p50 < 20 && c.p99 < 40 ? 'pass' : 'fail', note: 'two HTTP calls (create, command); with btrfs storage and --prewarm (the server default) a create takes a ready sandbox from the pool (refilled between runs while the baseline runs), else it makes a subvolume and starts bwrap and the supervisor (ext4 fallback: a disk image, loop and overlay mounts); the delete is outside the clock' });
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
    rows.push({ group: 'sandboxes', id: ROWS[1].id, scenario: `${ROWS[1].scenario}, n=${n * 2}`, target: ROWS[1].target, kindling: r.text, baseline: `plain bwrap \`true\` (a fresh sandbox each): ${pt.text}`, ratio: fmtRatio(r.p50 / pt.p50), status: r.p50 < 5 ? 'pass' : 'fail', note: 'HTTP + a FIFO set + the supervisor forking a subshell that sources the run script + exec' });
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

    // -- snapshots, forks, background commands (sbx-parity) -------------------------------------------------------
    await snapshotRows(ctx, api, server.dataDir, rows, data);
    await forkRows(ctx, api, server.dataDir, rows, data);
    await backgroundRow(ctx, api, n, rows, data);
    // -- speed and density (sbx-speed) --
    await createManyRow(ctx, api, rows, data);
    await fileRows(ctx, api, server.dataDir, rows, data);
    await fork100Row(ctx, api, rows, data);
    await pausedHeldRow(ctx, api, server.pid, rows, data);
    // --- ports: a proxied GET vs the same server on the host's loopback, alternated -------------------------------
    const portRow = await measurePortGet(api, n * 2, ctx);
    rows.push(portRow.row);
    data['sandboxes.port_get'] = portRow.data;
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

/* -- snapshots, forks, background commands (sbx-parity) ------------------------------------------------------------ */

const row = (id: string): (typeof ROWS)[number] => ROWS.find((r) => r.id === id)!;

/** `mib` files of 1 MiB of random bytes under `dir` (the baseline's copy of what the sandbox writes). */
async function hostFiles(dir: string, mib: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 1; i <= mib; i++) await writeFile(join(dir, `f${i}`), randomBytes(1 << 20));
}

/**
 * Snapshot of a sandbox holding 10 / 100 MiB of files it wrote itself, each snapshot deleted outside the clock;
 * alternated with `cp -a` of the same amount of data (written on the host, in the server's data dir: the disk the
 * snapshots go to) to a fresh directory of that disk.
 */
async function snapshotRows(ctx: BenchContext, api: Api, dataDir: string, rows: Row[], data: Record<string, unknown>): Promise<void> {
  for (const [mib, id, runs] of [[10, 'sandboxes.snapshot_10mib', 10], [100, 'sandboxes.snapshot_100mib', 5]] as const) {
    const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, runs) : runs;
    ctx.log(`sandboxes: snapshot with ${mib} MiB of files, ${n} runs (cp -a of the same data alternated)`);
    const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', limits: { diskMb: 512 }, idleTimeoutMs: 3_600_000 })).json.id as string;
    const baseDir = join(dataDir, `bench-cp-${mib}`);
    try {
      const wrote = await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', `mkdir -p data && for i in $(seq ${mib}); do head -c 1048576 /dev/urandom > data/f$i; done && du -sm data`], timeoutMs: 120_000 });
      if (wrote.json.exitCode !== 0) throw new Error(`writing ${mib} MiB failed: ${JSON.stringify(wrote.json.stderr)}`);
      await hostFiles(join(baseDir, 'src'), mib);
      const snaps: number[] = [];
      const copies: number[] = [];
      let bytes = 0;
      for (let i = 0; i < n; i++) {
        const snap = await api.call('POST', `/v1/sandboxes/${sb}/snapshots`, {});
        snaps.push(snap.ms);
        bytes = snap.json.bytes as number;
        await api.call('DELETE', `/v1/snapshots/${snap.json.id as string}`);
        copies.push((await timedSpawnOk('cp', ['-a', join(baseDir, 'src'), join(baseDir, `copy${i}`)], { env: CLEAN_ENV })).ms);
        await rm(join(baseDir, `copy${i}`), { recursive: true, force: true });
      }
      const k = stats(snaps);
      const b = stats(copies);
      const r = row(id);
      rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, n=${n}`, target: r.target, kindling: k.text, baseline: `plain \`cp -a\` of ${mib} MiB on the same disk: ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: k.p50 < 100 ? 'pass' : 'fail', note: `snapshot ${(bytes / 1048576).toFixed(1)} MiB: the sandbox frozen, a read-only btrfs snapshot of its subvolume (ext4 fallback: cp -a of /work), its size counted; the delete is outside the clock` });
      data[id] = { api: snaps, cp: copies, bytes };
    } finally {
      await api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined);
      await rm(baseDir, { recursive: true, force: true });
    }
  }
}

/**
 * `POST /v1/sandboxes/ID/fork` with count 1 and 10 on a sandbox with one small file (the forks, then the snapshot,
 * deleted outside the clock); alternated with as many overlay mounts (`mount -t overlay`, a lower dir of 10 files and
 * a fresh upper each) on the same disk, unmounted outside the clock.
 */
async function forkRows(ctx: BenchContext, api: Api, dataDir: string, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', idleTimeoutMs: 3_600_000 })).json.id as string;
  const dir = join(dataDir, 'bench-overlay');
  const mounted: string[] = [];
  try {
    await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', 'echo v1 > state.txt'] });
    await hostFiles(join(dir, 'lower'), 10);
    let serial = 0;
    const overlay = async (): Promise<number> => {
      const at = join(dir, `m${serial++}`);
      await mkdir(join(at, 'upper'), { recursive: true });
      await mkdir(join(at, 'work'), { recursive: true });
      await mkdir(join(at, 'merged'), { recursive: true });
      const ms = (await timedSpawnOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${join(dir, 'lower')},upperdir=${join(at, 'upper')},workdir=${join(at, 'work')}`, join(at, 'merged')], { env: CLEAN_ENV })).ms;
      mounted.push(join(at, 'merged'));
      return ms;
    };
    const unmountAll = async (): Promise<void> => {
      while (mounted.length > 0) await timedSpawnOk('umount', [mounted.pop()!], { env: CLEAN_ENV });
    };
    for (const [count, id, runs] of [[1, 'sandboxes.fork_1', 10], [10, 'sandboxes.fork_10', 5]] as const) {
      const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, runs) : runs;
      ctx.log(`sandboxes: fork ${count}, ${n} runs (${count} overlay mount(s) alternated)`);
      const forks: number[] = [];
      const mounts: number[] = [];
      for (let i = 0; i < n; i++) {
        const made = await api.call('POST', `/v1/sandboxes/${sb}/fork`, { count });
        forks.push(made.ms);
        const children = made.json.sandboxes as { id: string; state: string }[];
        if (children.length !== count || children.some((c) => c.state !== 'running')) throw new Error(`fork ${count} answered ${JSON.stringify(children.map((c) => c.state))}`);
        for (const child of children) await api.call('DELETE', `/v1/sandboxes/${child.id}`);
        await api.call('DELETE', `/v1/snapshots/${(made.json.snapshot as { id: string }).id}`);
        let total = 0;
        for (let j = 0; j < count; j++) total += await overlay();
        mounts.push(total);
        await unmountAll();
      }
      const k = stats(forks);
      const b = stats(mounts);
      const r = row(id);
      const limit = count === 1 ? 25 : 100;
      rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, n=${n}`, target: r.target, kindling: k.text, baseline: `${count} plain overlay mount(s) of a lower dir (\`mount -t overlay\`, one after another): ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: k.p50 < limit ? 'pass' : 'fail', note: 'one HTTP call: the snapshot (sandbox frozen, a read-only btrfs snapshot) and the sandboxes made from it (each: a writable snapshot of it, bwrap, the supervisor up; at most 4 starting at once); deletes outside the clock' });
      data[id] = { api: forks, overlayMounts: mounts };
    }
    await unmountAll();
  } finally {
    for (const at of mounted) await timedSpawnOk('umount', [at], { env: CLEAN_ENV }).catch(() => undefined);
    await api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

/** Starts `sh -c 'echo ready; sleep 30'` in the background, follows its logs (SSE) to the first stdout event. */
async function backgroundRow(ctx: BenchContext, api: Api, n: number, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const id = 'sandboxes.background_first_log';
  ctx.log(`sandboxes: background command start -> first log line, ${n} runs (plain bwrap echo alternated)`);
  const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', idleTimeoutMs: 3_600_000 })).json.id as string;
  try {
    const firsts: number[] = [];
    const plain: number[] = [];
    for (let i = 0; i < n; i++) {
      const started = performance.now();
      const cmd = (await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', 'echo ready; sleep 30'], background: true })).json.id as string;
      const logs = await fetch(`${api.url}/v1/sandboxes/${sb}/commands/${cmd}/logs`, { headers: { accept: 'text/event-stream' } });
      if (!logs.ok || logs.body === null) throw new Error(`logs answered ${logs.status}`);
      const reader = logs.body.getReader();
      const decoder = new TextDecoder();
      let text = '';
      while (!/event: stdout\ndata: ready/.test(text)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`the log stream ended before the first line: ${text.slice(0, 200)}`);
        text += decoder.decode(value, { stream: true });
      }
      firsts.push(performance.now() - started);
      await reader.cancel();
      await api.call('DELETE', `/v1/sandboxes/${sb}/commands/${cmd}`);
      plain.push((await bwrap(['echo', 'ready'])).ms);
    }
    const k = stats(firsts);
    const b = stats(plain);
    const r = row(id);
    rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, n=${n}`, target: r.target, kindling: k.text, baseline: `plain bwrap \`echo ready\` (fresh): ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: 'info', note: 'two HTTP calls (start, then the log stream until its first stdout event); the kill is outside the clock' });
    data[id] = { api: firsts, bwrap: plain };
  } finally {
    await api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined);
  }
}

/* -- speed and density (sbx-speed) --------------------------------------------------------------------------------- */

/** The paused-held row makes this many sandboxes (issue 16's target), unless something stops it first. */
const HELD_TARGET = 1000;

/** `count` plain `bwrap true` started at once; the wall time until all exited. */
async function plainBwrapsAtOnce(count: number): Promise<number> {
  const started = performance.now();
  await Promise.all(Array.from({ length: count }, () => bwrap(['true'])));
  return performance.now() - started;
}

/** 100 POST /v1/sandboxes at once (each answers once its sandbox is ready); deletes outside the clock. */
async function createManyRow(ctx: BenchContext, api: Api, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const id = 'sandboxes.create_100';
  const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, 3) : 3;
  ctx.log(`sandboxes: 100 creates at once, ${n} runs (100 plain bwrap true at once alternated)`);
  const walls: number[] = [];
  const plain: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const made = await Promise.allSettled(Array.from({ length: 100 }, () => api.call('POST', '/v1/sandboxes', { image: 'kindling/base' })));
    walls.push(performance.now() - started);
    const ids = made.flatMap((m) => (m.status === 'fulfilled' ? [m.value.json.id as string] : []));
    await Promise.all(ids.map((sb) => api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined)));
    const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
    if (failed !== undefined) throw new Error(`${100 - ids.length} of 100 creates failed: ${String(failed.reason).slice(0, 200)}`);
    plain.push(await plainBwrapsAtOnce(100));
  }
  const k = stats(walls);
  const b = stats(plain);
  const r = row(id);
  rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, n=${n}`, target: r.target, kindling: k.text, baseline: `100 plain bwrap \`true\` at once: ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: k.p50 < 1000 ? 'pass' : 'fail', note: 'each: a btrfs subvolume with its limit, bwrap, the supervisor up; deletes outside the clock' });
  data[id] = { api: walls, bwrap: plain };
}

/**
 * One request on a connection of its own with node:http: the body sent as it is, the answer's bytes counted and
 * dropped. fetch was the bottleneck of these rows (its arrayBuffer of 100 MiB alone ran at ~45 MB/s here, where curl
 * moved the same download at 200+ MB/s), so they measured the client more than the server.
 */
function rawTransfer(url: string, method: 'PUT' | 'GET', body?: Buffer): Promise<{ status: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, agent: false, headers: body === undefined ? {} : { 'content-type': 'application/octet-stream', 'content-length': String(body.length) } }, (res) => {
      let bytes = 0;
      res.on('data', (chunk: Buffer) => (bytes += chunk.length));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * PUT then GET of a 100 MiB file through the files API, MB/s each way (10^6 bytes per MB); next to writing and
 * reading the same bytes to and from a file of the server's data dir in this process (the host's page cache).
 */
async function fileRows(ctx: BenchContext, api: Api, dataDir: string, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  const size = 100 * 1024 * 1024;
  const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, 5) : 5;
  ctx.log(`sandboxes: file write + read of 100 MiB, ${n} runs (host file write + read alternated)`);
  const body = randomBytes(size);
  const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', limits: { diskMb: 512 }, idleTimeoutMs: 3_600_000 })).json.id as string;
  const hostFile = join(dataDir, 'bench-file');
  const mbps = (ms: number): number => size / 1e6 / (ms / 1000);
  try {
    const writes: number[] = [];
    const reads: number[] = [];
    const hostWrites: number[] = [];
    const hostReads: number[] = [];
    for (let i = 0; i < n; i++) {
      let started = performance.now();
      const put = await rawTransfer(`${api.url}/v1/sandboxes/${sb}/files?path=big.bin`, 'PUT', body);
      if (put.status !== 201) throw new Error(`PUT answered ${put.status}`);
      writes.push(performance.now() - started);
      started = performance.now();
      const got = await rawTransfer(`${api.url}/v1/sandboxes/${sb}/files?path=big.bin`, 'GET');
      reads.push(performance.now() - started);
      if (got.status !== 200 || got.bytes !== size) throw new Error(`GET answered ${got.status} with ${got.bytes} bytes`);
      started = performance.now();
      await writeFile(hostFile, body);
      hostWrites.push(performance.now() - started);
      started = performance.now();
      await readFile(hostFile);
      hostReads.push(performance.now() - started);
      await rm(hostFile, { force: true });
    }
    for (const [id, api_, host, way] of [['sandboxes.file_write_100mib', writes, hostWrites, 'write'], ['sandboxes.file_read_100mib', reads, hostReads, 'read']] as const) {
      const k = stats(api_);
      const b = stats(host);
      const r = row(id);
      const rate = mbps(k.p50);
      rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, n=${n}`, target: r.target, kindling: `${rate.toFixed(0)} MB/s at p50 (${k.text})`, baseline: `fs.${way === 'write' ? 'writeFile' : 'readFile'} of the same 100 MiB on the host: ${mbps(b.p50).toFixed(0)} MB/s (${b.text})`, ratio: fmtRatio(k.p50 / b.p50), status: rate >= 300 ? 'pass' : 'fail', note: way === 'write' ? 'HTTP body -> splice relay (kindling-splice) -> kindling-file on the sandbox disk from the host (sandbox uid, openat2 beneath its dir); node:http as the client' : 'kindling-file on the host -> splice relay -> the HTTP response as chunks; node:http as the client, bytes counted, not kept' });
      data[id] = { api: api_, host };
    }
  } finally {
    await api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined);
    await rm(hostFile, { force: true });
  }
}

/** POST /fork {count: 100}; the forks and the snapshot deleted outside the clock. */
async function fork100Row(ctx: BenchContext, api: Api, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const id = 'sandboxes.fork_100';
  const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, 3) : 3;
  ctx.log(`sandboxes: fork 100, ${n} runs (100 plain bwrap true at once alternated)`);
  const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', limits: { diskMb: 512 }, idleTimeoutMs: 3_600_000 })).json.id as string;
  try {
    await api.call('POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', 'mkdir -p data && for i in $(seq 10); do head -c 1048576 /dev/urandom > data/f$i; done'] });
    const forks: number[] = [];
    const plain: number[] = [];
    for (let i = 0; i < n; i++) {
      const made = await api.call('POST', `/v1/sandboxes/${sb}/fork`, { count: 100 });
      forks.push(made.ms);
      const children = made.json.sandboxes as { id: string; state: string }[];
      if (children.length !== 100 || children.some((c) => c.state !== 'running')) throw new Error(`fork 100 answered ${children.length} sandboxes`);
      await Promise.all(children.map((child) => api.call('DELETE', `/v1/sandboxes/${child.id}`)));
      await api.call('DELETE', `/v1/snapshots/${(made.json.snapshot as { id: string }).id}`);
      plain.push(await plainBwrapsAtOnce(100));
    }
    const k = stats(forks);
    const b = stats(plain);
    const r = row(id);
    rows.push({ group: 'sandboxes', id, scenario: `${r.scenario}, 10 MiB of files, n=${n}`, target: r.target, kindling: k.text, baseline: `100 plain bwrap \`true\` at once: ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: k.p50 < 1000 ? 'pass' : 'fail', note: 'one HTTP call: a read-only btrfs snapshot, then 100 writable snapshots of it (no data copied), each with bwrap and the supervisor up; deletes outside the clock' });
    data[id] = { api: forks, bwrap: plain };
  } finally {
    await api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined);
  }
}

/** Pids of the descendants of `root` (not itself), from /proc. */
async function descendantsOf(root: number): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const parents = new Map<number, number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const found = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of parents) {
      if (!found.has(pid) && found.has(ppid)) {
        found.add(pid);
        grew = true;
      }
    }
  }
  found.delete(root);
  return [...found];
}

/** kB of a /proc/PID/smaps_rollup or /proc/PID/status field; 0 when the process is gone. */
async function procKb(pid: number, file: 'smaps_rollup' | 'status', field: string): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  try {
    const text = await readFile(`/proc/${pid}/${file}`, 'utf8');
    return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * Creates sandboxes (8 at a time) and pauses each until HELD_TARGET are held paused or something refuses; then the
 * memory per paused sandbox: PSS of the server's descendant processes (supervisors, bwrap; smaps_rollup), the
 * sandboxes' cgroups' memory.current, and the server's own RSS growth, each divided by the count. Baseline: PSS of one
 * plain `bwrap sleep` (its processes). Deleted afterwards, outside any clock.
 */
async function pausedHeldRow(ctx: BenchContext, api: Api, serverPid: number, rows: Row[], data: Record<string, unknown>): Promise<void> {
  const id = 'sandboxes.paused_held';
  const { spawn } = await import('node:child_process');
  const { readFile } = await import('node:fs/promises');
  ctx.log(`sandboxes: paused sandboxes held, up to ${HELD_TARGET}`);
  const held: string[] = [];
  let stoppedBy = `reached the bench's count (${HELD_TARGET})`;
  const rssBefore = await procKb(serverPid, 'status', 'VmRSS');
  const started = performance.now();
  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < HELD_TARGET && stoppedBy.startsWith('reached')) {
        next++;
        try {
          const sb = (await api.call('POST', '/v1/sandboxes', { image: 'kindling/base', idleTimeoutMs: 3_600_000 })).json.id as string;
          held.push(sb);
          await api.call('POST', `/v1/sandboxes/${sb}/pause`, {});
        } catch (error) {
          stoppedBy = `stopped at ${held.length}: ${(error instanceof Error ? error.message : String(error)).slice(0, 160)}`;
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    const seconds = (performance.now() - started) / 1000;
    const pids = await descendantsOf(serverPid);
    let pss = 0;
    const cgroups = new Set<string>();
    for (const pid of pids) {
      pss += await procKb(pid, 'smaps_rollup', 'Pss');
      // cgroup v1: the memory controller's line (memory.usage_in_bytes); v2: the unified one (memory.current).
      const lines = (await readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '')).split('\n').filter((l) => l.includes('/kindling/'));
      const v1 = lines.find((l) => /^\d+:memory:/.test(l));
      const v2 = lines.find((l) => l.startsWith('0::'));
      if (v1 !== undefined) cgroups.add(`/sys/fs/cgroup/memory${v1.split(':')[2]!}/memory.usage_in_bytes`);
      else if (v2 !== undefined) cgroups.add(`/sys/fs/cgroup${v2.slice(3)}/memory.current`);
    }
    let current = 0;
    for (const file of cgroups) current += Number((await readFile(file, 'utf8').catch(() => '0')).trim());
    const rssGrowth = (await procKb(serverPid, 'status', 'VmRSS')) - rssBefore;
    // Baseline: one plain bwrap holding a sleep, its processes' PSS.
    const plain = spawn('bwrap', ['--ro-bind', ROOTFS_BASE, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '--die-with-parent', 'sleep', '60'], { env: CLEAN_ENV, stdio: 'ignore' });
    let plainPss = 0;
    try {
      await pollUntil('plain bwrap sleep started', async () => (await descendantsOf(plain.pid!)).length > 0);
      for (const pid of [plain.pid!, ...(await descendantsOf(plain.pid!))]) plainPss += await procKb(pid, 'smaps_rollup', 'Pss');
    } finally {
      plain.kill('SIGKILL');
    }
    const count = held.length;
    const per = (kb: number): string => `${(kb / Math.max(count, 1) / 1024).toFixed(2)} MiB`;
    const r = row(id);
    rows.push({
      group: 'sandboxes',
      id,
      scenario: `${r.scenario}, 8 created at a time`,
      target: r.target,
      kindling: `${count} held paused (made in ${seconds.toFixed(1)} s); per sandbox: PSS ${per(pss)}, cgroup memory ${per(current / 1024)}, server RSS growth ${per(rssGrowth)}`,
      baseline: `one plain bwrap \`sleep\`: PSS ${(plainPss / 1024).toFixed(2)} MiB`,
      ratio: fmtRatio(pss / Math.max(count, 1) / Math.max(plainPss, 1)),
      status: count >= 1000 ? 'pass' : 'fail',
      note: `${stoppedBy}; PSS over the server's ${pids.length} descendant processes (supervisors, bwrap, helpers); cgroup memory (v1 memory.usage_in_bytes, v2 memory.current) over ${cgroups.size} cgroups (page cache of their files included)`,
    });
    data[id] = { count, seconds, pssKb: pss, memoryCurrentBytes: current, serverRssGrowthKb: rssGrowth, plainPssKb: plainPss, stoppedBy };
  } finally {
    for (let i = 0; i < held.length; i += 16) await Promise.all(held.slice(i, i + 16).map((sb) => api.call('DELETE', `/v1/sandboxes/${sb}`).catch(() => undefined)));
  }
}
