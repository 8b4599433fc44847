/**
 * Persistent sandboxes on the docker executor (part of the `sandboxes` group): create -> first command output, a
 * command's round trip, pause and resume, and a snapshot of 10 MiB of written files, each next to the plain Docker
 * operation measured in the same run and alternated with it: `docker run --rm` (the CLI, as the docker group's
 * baseline), and the Engine API's exec, pause and unpause on a plain running container (dockerode, what the executor
 * itself calls), and `cp -a` of the same 10 MiB on the same disk. The targets are for the sandbox executor; these
 * rows are measured, not judged.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import { BENCH_LABEL, CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { DOCKER, timedSpawnOk } from './lib/proc.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, inAlternateOrder, quantile } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const BASE = 'kindling/base:latest';
const TARGET = 'measured (the issue 16 targets are for the sandbox executor)';
const ROWS = [
  { id: 'sandboxes.docker_create_first_output', scenario: 'Docker executor: create a persistent sandbox -> first command output (`echo hi`)' },
  { id: 'sandboxes.docker_command_rtt', scenario: 'Docker executor: command round trip on a live sandbox (`true`)' },
  { id: 'sandboxes.docker_pause', scenario: 'Docker executor: pause via API (`docker pause`: the cgroup freezer)' },
  { id: 'sandboxes.docker_resume', scenario: 'Docker executor: resume via API' },
  { id: 'sandboxes.docker_snapshot_10mib', scenario: 'Docker executor: snapshot of a sandbox with 10 MiB of written files (10 x 1 MiB)' },
] as const;

const stats = (samples: number[]): { p50: number; p99: number; text: string } => {
  const sorted = [...samples].sort((a, b) => a - b);
  const p50 = quantile(sorted, 0.5);
  const p99 = quantile(sorted, 0.99);
  return { p50, p99, text: `p50 ${fmtMs(p50)}, p99 ${fmtMs(p99)} (n=${samples.length})` };
};

async function call(url: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(url + path, { method, ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 300)}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await work();
  return { ms: performance.now() - started, value };
}

/** Runs `a` and `b` n times, alternating which goes first; returns both sample lists. */
async function alternated(n: number, a: () => Promise<number>, b: () => Promise<number>): Promise<[number[], number[]]> {
  const as: number[] = [];
  const bs: number[] = [];
  for (let i = 0; i < n; i++) {
    await inAlternateOrder(i, async () => as.push(await a()), async () => bs.push(await b()));
  }
  return [as, bs];
}

/** Runs `command` in a plain container through the Engine API (exec create + start, output read to its end). */
async function engineExec(container: Docker.Container, command: string[]): Promise<void> {
  const exec = await container.exec({ Cmd: command, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  await new Promise<void>((resolve, reject) => {
    stream.on('error', reject);
    stream.on('end', resolve);
    stream.on('close', resolve);
    stream.resume();
  });
  const info = await exec.inspect();
  if (info.ExitCode !== 0) throw new Error(`docker exec ${command.join(' ')} exited ${info.ExitCode}`);
}

export async function runDockerSandboxRows(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runsOverridden ? ctx.runs.sandbox : 20;
  const skipAll = (reason: string): GroupResult => ({ rows: ROWS.map((row) => skippedRow('sandboxes', row.id, row.scenario, TARGET, reason)), data: { skipped: reason } });
  const docker = new Docker({ socketPath: '/var/run/docker.sock' });
  try {
    await docker.ping();
    await docker.getImage(BASE).inspect();
  } catch (error) {
    return skipAll(`the Docker engine or ${BASE} is not there: ${error instanceof Error ? error.message : String(error)}`.slice(0, 200));
  }
  let server: BenchServer;
  try {
    server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'docker', extraArgs: ['--max-sandboxes-per-tenant', '1000', '--max-snapshots-per-tenant', '1000'] });
  } catch (error) {
    return skipAll(`server --executor docker did not start: ${error instanceof Error ? error.message : String(error)}`.slice(0, 200));
  }
  const url = server.url;
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  // The baseline's own container: as hardened as nothing, just running (`sleep`), no network.
  let plain: Docker.Container | null = null;
  try {
    plain = await docker.createContainer({ Image: BASE, Cmd: ['sleep', '3600'], Labels: { [BENCH_LABEL.split('=')[0]!]: BENCH_LABEL.split('=')[1]! }, HostConfig: { NetworkMode: 'none', AutoRemove: false } });
    await plain.start();
    const box = plain;

    const warm = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', executor: 'docker' })).id as string;
    await call(url, 'DELETE', `/v1/sandboxes/${warm}`);

    ctx.log(`sandboxes (docker): create -> first output, ${n} runs (docker run --rm echo alternated)`);
    const [created, runs] = await alternated(
      n,
      async () => {
        const { ms, value: id } = await timed(async () => {
          const id = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', executor: 'docker' })).id as string;
          const echo = await call(url, 'POST', `/v1/sandboxes/${id}/commands`, { command: ['echo', 'hi'] });
          if (echo.stdout !== 'hi\n') throw new Error(`echo printed ${JSON.stringify(echo.stdout)}`);
          return id;
        });
        await call(url, 'DELETE', `/v1/sandboxes/${id}`);
        return ms;
      },
      async () => (await timedSpawnOk(DOCKER, ['run', '--rm', '--network', 'none', '--label', BENCH_LABEL, BASE, 'echo', 'hi'], { env: CLEAN_ENV })).ms,
    );
    const c = stats(created);
    const dr = stats(runs);
    rows.push({ group: 'sandboxes', id: ROWS[0].id, scenario: `${ROWS[0].scenario}, n=${n}`, target: TARGET, kindling: c.text, baseline: `docker run --rm --network none \`echo hi\`: ${dr.text}`, ratio: fmtRatio(c.p50 / dr.p50), status: 'info', note: 'two HTTP calls (create, command); each create mounts the sandbox its own ext4 disk (loop + overlay) and creates and starts a hardened container binding it (never a prewarmed one), then one Engine API exec; the delete is outside the clock' });
    data[ROWS[0].id] = { api: created, dockerRun: runs };

    const sb = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', executor: 'docker', idleTimeoutMs: 3_600_000, limits: { diskMb: 256 } })).id as string;
    ctx.log(`sandboxes (docker): command round trip, ${n * 2} runs (Engine API exec of \`true\` in a plain container alternated)`);
    const [rtt, execs] = await alternated(
      n * 2,
      async () => (await timed(() => call(url, 'POST', `/v1/sandboxes/${sb}/commands`, { command: ['true'] }))).ms,
      async () => (await timed(() => engineExec(box, ['true']))).ms,
    );
    const r = stats(rtt);
    const de = stats(execs);
    rows.push({ group: 'sandboxes', id: ROWS[1].id, scenario: `${ROWS[1].scenario}, n=${n * 2}`, target: TARGET, kindling: r.text, baseline: `Engine API exec \`true\` in a running container (create + start + inspect): ${de.text}`, ratio: fmtRatio(r.p50 / de.p50), status: 'info', note: 'HTTP + the same Engine API exec, its end taken from the exec_die event' });
    data[ROWS[1].id] = { api: rtt, engineExec: execs };

    ctx.log(`sandboxes (docker): pause/resume, ${n * 2} runs each (Engine API pause/unpause of a plain container alternated)`);
    await call(url, 'POST', `/v1/sandboxes/${sb}/commands`, { command: ['sh', '-c', 'while :; do :; done >/dev/null 2>&1 &'] });
    const pauses: number[] = [];
    const resumes: number[] = [];
    const plainPauses: number[] = [];
    const plainResumes: number[] = [];
    for (let i = 0; i < n * 2; i++) {
      const p = await timed(() => call(url, 'POST', `/v1/sandboxes/${sb}/pause`, {}));
      if (p.value.state !== 'paused') throw new Error('not paused');
      pauses.push(p.ms);
      plainPauses.push((await timed(() => box.pause())).ms);
      const q = await timed(() => call(url, 'POST', `/v1/sandboxes/${sb}/resume`, {}));
      if (q.value.state !== 'running') throw new Error('not running');
      resumes.push(q.ms);
      plainResumes.push((await timed(() => box.unpause())).ms);
    }
    const ps = stats(pauses);
    const rs = stats(resumes);
    const pp = stats(plainPauses);
    const pr = stats(plainResumes);
    rows.push({ group: 'sandboxes', id: ROWS[2].id, scenario: `${ROWS[2].scenario}, a busy loop inside, n=${n * 2}`, target: TARGET, kindling: ps.text, baseline: `Engine API pause of a plain container: ${pp.text}`, ratio: fmtRatio(ps.p50 / pp.p50), status: 'info', note: 'HTTP + the same Engine API call' });
    rows.push({ group: 'sandboxes', id: ROWS[3].id, scenario: `${ROWS[3].scenario}, n=${n * 2}`, target: TARGET, kindling: rs.text, baseline: `Engine API unpause of a plain container: ${pr.text}`, ratio: fmtRatio(rs.p50 / pr.p50), status: 'info' });
    data['sandboxes.docker_pause_resume'] = { pause: pauses, resume: resumes, enginePause: plainPauses, engineUnpause: plainResumes };
    await call(url, 'DELETE', `/v1/sandboxes/${sb}`);

    const snapRuns = Math.min(n, 10);
    ctx.log(`sandboxes (docker): snapshot with 10 MiB of files, ${snapRuns} runs (cp -a of the same data alternated)`);
    const sbs = (await call(url, 'POST', '/v1/sandboxes', { image: 'kindling/base', executor: 'docker', idleTimeoutMs: 3_600_000, limits: { diskMb: 256 } })).id as string;
    const baseDir = join(server.dataDir, 'bench-cp-docker');
    try {
      const wrote = await call(url, 'POST', `/v1/sandboxes/${sbs}/commands`, { command: ['sh', '-c', 'mkdir -p data && for i in $(seq 10); do head -c 1048576 /dev/urandom > data/f$i; done'], timeoutMs: 120_000 });
      if (wrote.exitCode !== 0) throw new Error(`writing 10 MiB failed: ${JSON.stringify(wrote.stderr)}`);
      await mkdir(join(baseDir, 'src'), { recursive: true });
      for (let i = 0; i < 10; i++) await writeFile(join(baseDir, 'src', `f${i}`), randomBytes(1 << 20));
      let copy = 0;
      const [snaps, copies] = await alternated(
        snapRuns,
        async () => {
          const { ms, value } = await timed(() => call(url, 'POST', `/v1/sandboxes/${sbs}/snapshots`, {}));
          await call(url, 'DELETE', `/v1/snapshots/${value.id as string}`);
          return ms;
        },
        async () => {
          const target = join(baseDir, `copy${copy++}`);
          const { ms } = await timedSpawnOk('cp', ['-a', join(baseDir, 'src'), target], { env: CLEAN_ENV });
          await rm(target, { recursive: true, force: true });
          return ms;
        },
      );
      const k = stats(snaps);
      const b = stats(copies);
      rows.push({ group: 'sandboxes', id: ROWS[4].id, scenario: `${ROWS[4].scenario}, n=${snapRuns}`, target: TARGET, kindling: k.text, baseline: `plain \`cp -a\` of 10 MiB on the same disk: ${b.text}`, ratio: fmtRatio(k.p50 / b.p50), status: 'info', note: 'the container paused (Engine API), its merged /work (ext4 loop disk + overlay) copied with cp -a, unpaused; the delete is outside the clock' });
      data[ROWS[4].id] = { api: snaps, cp: copies };
    } finally {
      await call(url, 'DELETE', `/v1/sandboxes/${sbs}`).catch(() => undefined);
      await rm(baseDir, { recursive: true, force: true });
    }
    return { rows, data };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`sandboxes (docker) failed: ${message}`);
    const done = new Set(rows.map((row) => row.id));
    for (const row of ROWS) {
      if (!done.has(row.id)) rows.push({ group: 'sandboxes', id: row.id, scenario: row.scenario, target: TARGET, kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', status: 'error' });
    }
    return { rows, data: { ...data, error: message } };
  } finally {
    await plain?.remove({ force: true }).catch(() => undefined);
    await server.stop();
  }
}
