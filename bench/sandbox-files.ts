/**
 * Directory transfers and hibernation of persistent sandboxes on the sandbox executor: a tar archive of 64 MiB
 * (64 files of 1 MiB) uploaded into a sandbox (PUT .../files/tar: checked entry by entry, extracted inside the
 * sandbox into a staging dir, merged in) and downloaded (GET .../files/tar), each next to GNU tar doing the same on
 * the host on the same disk; and hibernate -> the next command (files kept, processes ended: a new process tree on
 * the same disk) next to a fresh create -> first command. Alternated, measured in the same run.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { timedSpawnOk } from './lib/proc.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, quantile } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const GROUP = 'sandbox-files' as const;
const MIB = 64;
const ROWS = [
  { id: 'sandbox_files.tar_upload', scenario: `Upload a directory as tar (${MIB} x 1 MiB) into a sandbox (PUT .../files/tar)`, target: 'measured (issue 16: file write >= 300 MB/s as a guide)' },
  { id: 'sandbox_files.tar_download', scenario: `Download a directory as tar (${MIB} x 1 MiB) from a sandbox (GET .../files/tar)`, target: 'measured (issue 16: file read >= 300 MB/s as a guide)' },
  { id: 'sandbox_files.hibernate_wake', scenario: 'Hibernate (files kept, processes end) -> next command output (`echo hi`, wakes it)', target: 'measured (no target for the files-only path)' },
] as const;

const p50 = (samples: number[]): number => quantile([...samples].sort((a, b) => a - b), 0.5);
const mbps = (ms: number): number => (MIB * 1048576) / 1e6 / (ms / 1000);

async function call(url: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(url + path, { method, ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 300)}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

export async function runSandboxFilesGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, 10) : 7;
  const skipAll = (reason: string): GroupResult => ({ rows: ROWS.map((row) => skippedRow(GROUP, row.id, row.scenario, row.target, reason)), data: { skipped: reason } });
  try {
    await access('/var/lib/kindling/images/base/rootfs');
  } catch {
    return skipAll('no rootfs at /var/lib/kindling/images/base/rootfs');
  }
  let server: BenchServer;
  try {
    server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--max-sandboxes-per-tenant', '100'] });
  } catch (error) {
    return skipAll(`server --executor sandbox did not start: ${error instanceof Error ? error.message : String(error)}`.slice(0, 200));
  }
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const url = server.url;
  // The host side of the baselines lives on the server's own disk (its data dir).
  const host = join(server.dataDir, 'bench-files');
  try {
    const source = join(host, 'src');
    await mkdir(source, { recursive: true });
    for (let i = 0; i < MIB; i++) await writeFile(join(source, `f${i}`), randomBytes(1 << 20));
    await timedSpawnOk('tar', ['-C', source, '-cf', join(host, 'a.tar'), '.'], { env: CLEAN_ENV });
    const tarBytes = await readFile(join(host, 'a.tar'));
    const sb = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', limits: { diskMb: 4 * MIB, memoryMb: 512 }, idleTimeoutMs: 3_600_000 })).id as string;
    const put = async (): Promise<number> => {
      const started = performance.now();
      const response = await fetch(`${url}/v1/sandboxes/${sb}/files/tar?path=/work/up`, { method: 'PUT', body: tarBytes, headers: { 'content-type': 'application/x-tar' } });
      const text = await response.text();
      const ms = performance.now() - started;
      if (response.status !== 201) throw new Error(`tar upload answered ${response.status}: ${text.slice(0, 300)}`);
      return ms;
    };
    // Warm-up: one of each.
    await put();
    ctx.log(`sandbox-files: tar upload and download of ${MIB} MiB, ${n} runs each (host tar alternated)`);
    const up: number[] = [];
    const hostUp: number[] = [];
    const down: number[] = [];
    const hostDown: number[] = [];
    // The same bytes as one file through the plain file routes: what the tar path adds over the command pipe itself.
    const fileUp: number[] = [];
    const fileDown: number[] = [];
    for (let i = 0; i < n; i++) {
      await call(url, 'DELETE', `/v1/sandboxes/${sb}/files?path=/work/up`);
      up.push(await put());
      const target = join(host, `x${i}`);
      await mkdir(target, { recursive: true });
      const started = performance.now();
      await timedSpawnOk('tar', ['-C', target, '-xf', join(host, 'a.tar')], { env: CLEAN_ENV });
      hostUp.push(performance.now() - started);
      await rm(target, { recursive: true, force: true });

      const downStarted = performance.now();
      const response = await fetch(`${url}/v1/sandboxes/${sb}/files/tar?path=/work/up`);
      const got = (await response.arrayBuffer()).byteLength;
      down.push(performance.now() - downStarted);
      if (got < MIB * 1048576) throw new Error(`tar download gave ${got} bytes`);
      const fileStarted = performance.now();
      const wrote = await fetch(`${url}/v1/sandboxes/${sb}/files?path=/work/one.bin`, { method: 'PUT', body: tarBytes });
      await wrote.arrayBuffer();
      fileUp.push(performance.now() - fileStarted);
      const readStarted = performance.now();
      await (await fetch(`${url}/v1/sandboxes/${sb}/files?path=/work/one.bin`)).arrayBuffer();
      fileDown.push(performance.now() - readStarted);
      // tar writing to a pipe (not /dev/null, which GNU tar notices and skips reading).
      hostDown.push((await timedSpawnOk('sh', ['-c', 'tar -C "$1" -cf - . | cat > /dev/null', 'x', source], { env: CLEAN_ENV })).ms);
    }
    const [u, hu, d, hd, fu, fd] = [p50(up), p50(hostUp), p50(down), p50(hostDown), p50(fileUp), p50(fileDown)];
    rows.push({ group: GROUP, id: ROWS[0].id, scenario: `${ROWS[0].scenario}, n=${n}`, target: ROWS[0].target, kindling: `p50 ${fmtMs(u)} = ${mbps(u).toFixed(0)} MB/s`, baseline: `host \`tar -x\` of the same archive on the same disk: p50 ${fmtMs(hu)} = ${mbps(hu).toFixed(0)} MB/s`, ratio: fmtRatio(u / hu), status: 'info', note: `HTTP body -> TarGuard (headers checked) -> tar -x inside the sandbox (a staging dir on its ext4 loop disk + overlay) -> merged with cp -al; the same bytes as one file (PUT .../files): p50 ${fmtMs(fu)} = ${mbps(fu).toFixed(0)} MB/s` });
    rows.push({ group: GROUP, id: ROWS[1].id, scenario: `${ROWS[1].scenario}, n=${n}`, target: ROWS[1].target, kindling: `p50 ${fmtMs(d)} = ${mbps(d).toFixed(0)} MB/s`, baseline: `host \`tar -c | cat\` of the same files: p50 ${fmtMs(hd)} = ${mbps(hd).toFixed(0)} MB/s`, ratio: fmtRatio(d / hd), status: 'info', note: `tar -c inside the sandbox -> its command stdout pipe -> HTTP; the same bytes as one file (GET .../files): p50 ${fmtMs(fd)} = ${mbps(fd).toFixed(0)} MB/s` });
    data[ROWS[0].id] = { api: up, host: hostUp, oneFile: fileUp };
    data[ROWS[1].id] = { api: down, host: hostDown, oneFile: fileDown };
    await call(url, 'DELETE', `/v1/sandboxes/${sb}`);

    ctx.log(`sandbox-files: hibernate -> next command, ${n} runs (create -> first command alternated)`);
    const hib = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', idleTimeoutMs: 3_600_000 })).id as string;
    const wake: number[] = [];
    const fresh: number[] = [];
    for (let i = 0; i < n; i++) {
      const started = performance.now();
      await call(url, 'POST', `/v1/sandboxes/${hib}/hibernate`, {});
      const echo = await call(url, 'POST', `/v1/sandboxes/${hib}/commands`, { command: ['echo', 'hi'] });
      wake.push(performance.now() - started);
      if (echo.stdout !== 'hi\n') throw new Error(`echo printed ${JSON.stringify(echo.stdout)}`);
      const createStarted = performance.now();
      const made = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base' })).id as string;
      await call(url, 'POST', `/v1/sandboxes/${made}/commands`, { command: ['echo', 'hi'] });
      fresh.push(performance.now() - createStarted);
      await call(url, 'DELETE', `/v1/sandboxes/${made}`);
    }
    await call(url, 'DELETE', `/v1/sandboxes/${hib}`);
    const [w, f] = [p50(wake), p50(fresh)];
    rows.push({ group: GROUP, id: ROWS[2].id, scenario: `${ROWS[2].scenario}, n=${n}`, target: ROWS[2].target, kindling: `p50 ${fmtMs(w)}`, baseline: `create -> first command of a fresh sandbox: p50 ${fmtMs(f)}`, ratio: fmtRatio(w / f), status: 'info', note: 'two HTTP calls (hibernate: the sandbox destroyed, its disk unmounted and kept; the command: the disk mounted again, bwrap and the supervisor started)' });
    data[ROWS[2].id] = { hibernateWake: wake, create: fresh };
    return { rows, data };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`sandbox-files group failed: ${message}`);
    const done = new Set(rows.map((r) => r.id));
    for (const r of ROWS) if (!done.has(r.id)) rows.push({ group: GROUP, id: r.id, scenario: r.scenario, target: r.target, kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', status: 'error' });
    return { rows, data: { ...data, error: message } };
  } finally {
    await rm(host, { recursive: true, force: true });
    await server.stop();
  }
}
