import { createHash, randomBytes } from 'node:crypto';
import { access, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BenchClient, type TimedExecute } from './lib/client.js';
import { posixCksum } from './lib/cksum.js';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { execText, sleep, timedSpawnOk } from './lib/proc.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, fmtSummary, inAlternateOrder, summarize } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const IMAGES_DIR = '/var/lib/kindling/images';
const ROOTFS_BASE = join(IMAGES_DIR, 'base', 'rootfs');
const MiB = 1024 * 1024;
const BIG_MIB = 100;
const HOST_PYTHON = '/usr/bin/python3'; // Debian's 3.11, like the image's (`python3` on PATH here is a pyenv build)

interface ApiSample {
  ms: number;
  serverDurationMs: number;
  coldStart: boolean;
  timings?: { queuedMs: number; startMs: number; runMs: number };
}

const apiSample = (timed: TimedExecute): ApiSample => ({
  ms: timed.ms,
  serverDurationMs: timed.result.durationMs,
  coldStart: timed.result.coldStart,
  ...(timed.result.timings ? { timings: timed.result.timings } : {}),
});

const bwrapArgs = (rootfs: string, command: string[]): string[] => [
  '--ro-bind', rootfs, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '--die-with-parent', ...command,
];

const bwrap = (command: string[], stdinFile?: string, rootfs = ROOTFS_BASE) =>
  timedSpawnOk('bwrap', bwrapArgs(rootfs, command), { env: CLEAN_ENV, ...(stdinFile ? { stdinFile } : {}) });

function expectSandbox(timed: TimedExecute): TimedExecute {
  if (timed.result.executor !== 'sandbox') throw new Error(`expected the sandbox executor, the server used ${timed.result.executor}`);
  return timed;
}

function expectStdout(actual: string | Buffer, expected: string, what: string): void {
  if (String(actual) !== expected) throw new Error(`${what}: expected stdout ${JSON.stringify(expected)}, got ${JSON.stringify(String(actual).slice(0, 200))}`);
}

const ALL_ROWS: { id: string; scenario: string; target: string }[] = [
  { id: 'sandbox.cold_echo', scenario: 'Sandbox cold start, `echo hi` via API', target: 'median < 30 ms' },
  { id: 'sandbox.cold_echo_vs_bwrap', scenario: 'Sandbox cold start vs plain bwrap', target: '≤ 2.0x plain bwrap' },
  { id: 'sandbox.python_pass', scenario: 'Sandbox `python3 -c pass` via API', target: '— (no target set)' },
  { id: 'sandbox.node_e0', scenario: 'Sandbox `node -e 0` via API', target: '— (no target set)' },
  { id: 'sandbox.python313_pass', scenario: 'Sandbox `python3 -c pass` via API, python3.13 (trixie)', target: '— (no target set)' },
  { id: 'sandbox.node20_e0', scenario: 'Sandbox `node -e 0` via API, node20 (trixie)', target: '— (no target set)' },
  { id: 'sandbox.deno_eval0', scenario: 'Sandbox `deno eval 0` via API, deno (its npm build)', target: '— (no target set)' },
  { id: 'sandbox.bun_e0', scenario: 'Sandbox `bun -e 0` via API, bun (its npm build)', target: '— (no target set)' },
  { id: 'sandbox.go_build_run', scenario: 'Sandbox Go hello (fmt) built and run via API, go (the image\'s library cache)', target: '— (no target set)' },
  { id: 'sandbox.stdin_1mib', scenario: 'Sandbox 1 MiB stdin round trip through `cat`', target: 'adds < 100 ms to echo' },
  { id: 'sandbox.stdin_100mib_in', scenario: `Sandbox ${BIG_MIB} MiB stdin into \`cksum\``, target: '≥ 300 MB/s' },
  { id: 'sandbox.stdin_100mib_cat', scenario: `Sandbox ${BIG_MIB} MiB round trip through \`cat\``, target: '≥ 300 MB/s' },
];

const allSkipped = (reason: string): Row[] => ALL_ROWS.map((row) => skippedRow('sandbox', row.id, row.scenario, row.target, reason));

function errorRow(id: string, message: string): Row {
  const meta = ALL_ROWS.find((row) => row.id === id) ?? { scenario: id, target: '—' };
  return { group: 'sandbox', id, scenario: meta.scenario, target: meta.target, kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', status: 'error' };
}

/** Why the sandbox cannot be measured, or null when /readyz says it is ready. */
async function sandboxReadiness(client: BenchClient): Promise<string | null> {
  const { status, body } = await client.getJson('/readyz');
  const ready = body as { status?: string; defaultExecutor?: string; defaultExecutorReason?: string; executors?: { name: string; ready: boolean; reason: string }[] } | null;
  const sandbox = ready?.executors?.find((executor) => executor.name === 'sandbox');
  if (!sandbox) {
    const listed = ready?.executors?.map((executor) => executor.name).join(', ') || 'none';
    return `/readyz (${status}, ${ready?.status ?? '?'}) lists no sandbox executor (executors: ${listed}); this build has none yet`;
  }
  if (!sandbox.ready) return `/readyz (${status}): sandbox not ready: ${sandbox.reason}`;
  if (status !== 200 || ready?.defaultExecutor !== 'sandbox') return `/readyz answered ${status}, default executor ${ready?.defaultExecutor ?? '?'}`;
  return null;
}

/** Echo cold start via the API vs plain bwrap on the same rootfs, alternated. */
async function coldEcho(ctx: BenchContext, client: BenchClient, n: number): Promise<{ rows: Row[]; data: unknown }> {
  ctx.log(`sandbox: cold start echo, ${n} runs each`);
  const spec = { image: 'kindling/base', command: ['echo', 'hi'], executor: 'sandbox' };
  for (let i = 0; i < 3; i++) {
    expectSandbox(await client.executeOk(spec));
    await bwrap(['echo', 'hi']);
  }
  const api: ApiSample[] = [];
  const raw: number[] = [];
  for (let i = 0; i < n; i++) {
    const runApi = async () => {
      const timed = expectSandbox(await client.executeOk(spec));
      expectStdout(timed.result.stdout, 'hi\n', 'API echo');
      api.push(apiSample(timed));
    };
    const runRaw = async () => {
      const run = await bwrap(['echo', 'hi']);
      expectStdout(run.stdout, 'hi\n', 'bwrap echo');
      raw.push(run.ms);
    };
    await inAlternateOrder(i, runApi, runRaw);
  }
  const k = summarize(api.map((sample) => sample.ms));
  const b = summarize(raw);
  const ratio = k.median / b.median;
  const cold = api.filter((sample) => sample.coldStart).length;
  const [first, second] = ALL_ROWS as [(typeof ALL_ROWS)[number], (typeof ALL_ROWS)[number]];
  const baseline = `plain bwrap (ro rootfs, --unshare-all): ${fmtSummary(b)}`;
  return {
    rows: [
      { group: 'sandbox', id: first.id, scenario: `${first.scenario}, n=${n}`, target: first.target, kindling: fmtSummary(k), baseline, ratio: fmtRatio(ratio), status: k.median < 30 ? 'pass' : 'fail', note: `coldStart=true in ${cold}/${n}` },
      { group: 'sandbox', id: second.id, scenario: `${second.scenario}, n=${n}`, target: second.target, kindling: fmtSummary(k), baseline, ratio: fmtRatio(ratio), status: ratio <= 2 ? 'pass' : 'fail', note: 'bwrap as root here; the API adds its own uid switch, cgroup, seccomp, overlay and HTTP' },
    ],
    data: { api, bwrap: raw, summary: { api: k, bwrap: b, ratio } },
  };
}

/** An interpreter's empty start via the API vs directly on the host (clean environment), alternated. */
async function interpreterStart(
  ctx: BenchContext,
  client: BenchClient,
  n: number,
  id: string,
  image: string,
  command: string[],
  host: { file: string; args: string[] },
  versionCommand: string[] = [command[0] as string, '--version'],
): Promise<{ row: Row; data: unknown }> {
  const meta = ALL_ROWS.find((row) => row.id === id) as (typeof ALL_ROWS)[number];
  ctx.log(`sandbox: ${command.join(' ')}, ${n} runs each`);
  const spec = { image, command, executor: 'sandbox' };
  const versionSpec = { image, command: versionCommand, executor: 'sandbox' };
  const inside = (await client.executeOk(versionSpec)).result;
  const outside = await execText(host.file, ['--version']).catch(() => '?');
  for (let i = 0; i < 3; i++) {
    expectSandbox(await client.executeOk(spec));
    await timedSpawnOk(host.file, host.args, { env: CLEAN_ENV });
  }
  const api: ApiSample[] = [];
  const direct: number[] = [];
  for (let i = 0; i < n; i++) {
    const runApi = async () => api.push(apiSample(expectSandbox(await client.executeOk(spec))));
    const runHost = async () => direct.push((await timedSpawnOk(host.file, host.args, { env: CLEAN_ENV })).ms);
    await inAlternateOrder(i, runApi, runHost);
  }
  const k = summarize(api.map((sample) => sample.ms));
  const b = summarize(direct);
  const version = (text: string): string => text.trim().split('\n')[0] ?? '?';
  return {
    row: {
      group: 'sandbox', id, scenario: `${meta.scenario}, n=${n}`, target: meta.target,
      kindling: fmtSummary(k),
      baseline: `host \`${[host.file, ...host.args].join(' ')}\`: ${fmtSummary(b)}`,
      ratio: fmtRatio(k.median / b.median),
      status: 'info',
      note: `adds ${fmtMs(k.median - b.median)}; image: ${version(inside.stdout + inside.stderr)}, host: ${version(outside)} (clean env)`,
    },
    data: { api, host: direct, summary: { api: k, host: b } },
  };
}

/** 1 MiB through `cat` and its overhead over echo; baseline the same pair under plain bwrap. */
async function stdin1MiB(ctx: BenchContext, client: BenchClient, n: number): Promise<{ row: Row; data: unknown }> {
  const meta = ALL_ROWS.find((row) => row.id === 'sandbox.stdin_1mib') as (typeof ALL_ROWS)[number];
  ctx.log(`sandbox: 1 MiB stdin round trip, ${n} runs each`);
  const payload = randomBytes(MiB);
  const file = join(ctx.workDir, 'sandbox-1mib.bin');
  await writeFile(file, payload);
  const echoSpec = { image: 'kindling/base', command: ['echo', 'hi'], executor: 'sandbox' };
  const catSpec = { image: 'kindling/base', command: ['cat'], stdinBase64: payload.toString('base64'), outputEncoding: 'base64', executor: 'sandbox' };
  const apiEcho: ApiSample[] = [];
  const apiCat: ApiSample[] = [];
  const rawEcho: number[] = [];
  const rawCat: number[] = [];
  let exactApi = 0;
  let exactRaw = 0;
  for (let i = 0; i < n; i++) {
    const runApi = async () => {
      apiEcho.push(apiSample(expectSandbox(await client.executeOk(echoSpec))));
      const cat = expectSandbox(await client.executeOk(catSpec));
      if (Buffer.from(cat.result.stdout, 'base64').equals(payload)) exactApi++;
      apiCat.push(apiSample(cat));
    };
    const runRaw = async () => {
      rawEcho.push((await bwrap(['echo', 'hi'])).ms);
      const cat = await bwrap(['cat'], file);
      if (cat.stdout.equals(payload)) exactRaw++;
      rawCat.push(cat.ms);
    };
    await inAlternateOrder(i, runApi, runRaw);
  }
  const ke = summarize(apiEcho.map((sample) => sample.ms));
  const kc = summarize(apiCat.map((sample) => sample.ms));
  const be = summarize(rawEcho);
  const bc = summarize(rawCat);
  const overhead = kc.median - ke.median;
  const baselineOverhead = bc.median - be.median;
  const exact = exactApi === n && exactRaw === n;
  return {
    row: {
      group: 'sandbox', id: meta.id, scenario: `${meta.scenario} via API (base64 both ways), n=${n}`, target: meta.target,
      kindling: `+${fmtMs(overhead)} (cat ${fmtMs(kc.median)}, p95 ${fmtMs(kc.p95)}; echo ${fmtMs(ke.median)})`,
      baseline: `bwrap cat < file: +${fmtMs(baselineOverhead)} (cat ${fmtMs(bc.median)}; echo ${fmtMs(be.median)})`,
      ratio: baselineOverhead >= 5 ? fmtRatio(overhead / baselineOverhead) : 'n/a (baseline adds < 5 ms)',
      status: exact && overhead < 100 ? 'pass' : 'fail',
      note: `byte-exact: API ${exactApi}/${n}, bwrap ${exactRaw}/${n}; target borrowed from issue 2`,
    },
    data: { apiEcho, apiCat, bwrapEcho: rawEcho, bwrapCat: rawCat, exactApi, exactRaw, summary: { apiEcho: ke, apiCat: kc, bwrapEcho: be, bwrapCat: bc, overhead, baselineOverhead } },
  };
}

const mbPerS = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

/**
 * 100 MiB through the sandbox, twice: into `cksum` (one way, checked against a CRC computed here), and a full round trip
 * through `cat` whose output is sha256-hashed here. Request bodies are serialized before the clock starts; the response's JSON parse is inside it.
 */
async function stdin100MiB(ctx: BenchContext, client: BenchClient, runs: number): Promise<{ rows: Row[]; data: unknown }> {
  ctx.log(`sandbox: ${BIG_MIB} MiB stdin, ${runs} runs each (+1 warm-up)`);
  const bytes = BIG_MIB * MiB;
  const payload = randomBytes(bytes);
  const digest = createHash('sha256').update(payload).digest('hex');
  const file = join(ctx.workDir, 'sandbox-100mib.bin');
  await writeFile(file, payload);
  const expectedCksum = posixCksum(payload);
  // Raw mode: the payload is the request body, streamed to stdin; no JSON, no base64 (see docs/api.md, raw executions).
  const inSpec = { image: 'kindling/base', command: ['cksum'], executor: 'sandbox', timeoutMs: 120_000 };
  const catSpec = { image: 'kindling/base', command: ['cat'], executor: 'sandbox', timeoutMs: 120_000 };
  const data: Record<string, unknown> = { bytes, sha256: digest };
  const rows: Row[] = [];
  const inMeta = ALL_ROWS.find((row) => row.id === 'sandbox.stdin_100mib_in') as (typeof ALL_ROWS)[number];
  const catMeta = ALL_ROWS.find((row) => row.id === 'sandbox.stdin_100mib_cat') as (typeof ALL_ROWS)[number];

  try {
    const api: ApiSample[] = [];
    const raw: number[] = [];
    let exact = 0;
    for (let i = 0; i <= runs; i++) {
      const rawRun = await client.executeRaw(inSpec, payload, false);
      if (!rawRun.result) throw new Error('no JSON result');
      const timed = expectSandbox({ ms: rawRun.ms, result: rawRun.result });
      const ok = timed.result.stdout.trim() === expectedCksum;
      const run = await bwrap(['cksum'], file);
      if (run.stdout.toString('utf8').trim() !== expectedCksum) throw new Error('bwrap cksum printed a wrong checksum');
      if (i === 0) {
        data.inWarmup = { api: apiSample(timed), bwrap: run.ms };
        continue;
      }
      if (ok) exact++;
      api.push(apiSample(timed));
      raw.push(run.ms);
      await sleep(200);
    }
    const k = summarize(api.map((sample) => sample.ms));
    const b = summarize(raw);
    const rate = mbPerS(bytes, k.median);
    const rawRate = mbPerS(bytes, b.median);
    data.in = { api, bwrap: raw, exact, cksum: expectedCksum, summary: { api: k, bwrap: b, mbPerS: rate, bwrapMbPerS: rawRate } };
    rows.push({
      group: 'sandbox', id: inMeta.id, scenario: `${inMeta.scenario} via API (raw body in), n=${runs}`, target: inMeta.target,
      kindling: `${rate.toFixed(0)} MB/s (median ${fmtMs(k.median)})`,
      baseline: `bwrap cksum < file: ${rawRate.toFixed(0)} MB/s (${fmtMs(b.median)})`,
      ratio: fmtRatio(rate / rawRate),
      status: exact === runs && rate >= 300 ? 'pass' : 'fail',
      note: `POSIX cksum matches (computed here): ${exact}/${runs}; cksum, not sha256sum (~340 MB/s here, would cap the figure); MB = 10^6 bytes`,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`  ${inMeta.id} failed: ${message}`);
    rows.push(errorRow(inMeta.id, message));
    data.in = { error: message };
  }

  try {
    const api: { ms: number }[] = [];
    const raw: number[] = [];
    let exact = 0;
    for (let i = 0; i <= runs; i++) {
      const timed = await client.executeRaw(catSpec, payload, true);
      const outDigest = timed.sha256;
      const truncated = timed.exitCode !== 0;
      const run = await bwrap(['cat'], file);
      const rawOk = createHash('sha256').update(run.stdout).digest('hex') === digest;
      if (!rawOk) throw new Error('bwrap cat returned different bytes');
      if (i === 0) {
        data.catWarmup = { api: { ms: timed.ms }, bwrap: run.ms };
        continue;
      }
      if (outDigest === digest && !truncated) exact++;
      api.push({ ms: timed.ms });
      raw.push(run.ms);
      await sleep(200);
    }
    const k = summarize(api.map((sample) => sample.ms));
    const b = summarize(raw);
    const rate = mbPerS(bytes, k.median);
    const rawRate = mbPerS(bytes, b.median);
    data.cat = { api, bwrap: raw, exact, summary: { api: k, bwrap: b, mbPerS: rate, bwrapMbPerS: rawRate } };
    rows.push({
      group: 'sandbox', id: catMeta.id, scenario: `${catMeta.scenario} via API (raw body in, raw stdout out), n=${runs}`, target: catMeta.target,
      kindling: `${rate.toFixed(0)} MB/s (median ${fmtMs(k.median)})`,
      baseline: `bwrap cat < file > pipe: ${rawRate.toFixed(0)} MB/s (${fmtMs(b.median)})`,
      ratio: fmtRatio(rate / rawRate),
      status: exact === runs && rate >= 300 ? 'pass' : 'fail',
      note: `output sha256 matches: ${exact}/${runs}; exit code from the trailer; MB = 10^6 bytes of payload`,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`  ${catMeta.id} failed: ${message}`);
    rows.push(errorRow(catMeta.id, message));
    data.cat = { error: message };
  }
  return { rows, data };
}

export async function runSandboxGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runs.sandbox;
  try {
    await access(ROOTFS_BASE);
  } catch {
    return { rows: allSkipped(`no rootfs at ${ROOTFS_BASE}`), data: { skipped: `no rootfs at ${ROOTFS_BASE}` } };
  }
  let server: BenchServer;
  try {
    server = await launchServer({
      repoRoot: ctx.repoRoot,
      executor: 'sandbox',
      // The default --prewarm: the sandbox keeps its 2 launchers, as these figures always had (a launcher is a fresh,
      // unshaped sandbox process; "cold start" here means a fresh sandbox per execution, which every one is).
      extraArgs: ['--max-body-bytes', String(256 * MiB)],
    });
  } catch (error) {
    const reason = `server --executor sandbox did not start: ${error instanceof Error ? error.message : String(error)}`;
    ctx.log(`sandbox: ${reason}`);
    return { rows: allSkipped(reason.slice(0, 200)), data: { skipped: reason } };
  }
  const client = new BenchClient(server.url);
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  try {
    const notReady = await sandboxReadiness(client);
    if (notReady !== null) {
      ctx.log(`sandbox: ${notReady}`);
      return { rows: allSkipped(notReady.slice(0, 200)), data: { skipped: notReady } };
    }
    ctx.log(`sandbox: server pid ${server.pid} ready`);
    const attempt = async <T>(ids: string[], fn: () => Promise<T>, take: (value: T) => void): Promise<void> => {
      try {
        take(await fn());
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        ctx.log(`  ${ids.join(', ')} failed: ${message}`);
        for (const id of ids) {
          rows.push(errorRow(id, message));
          data[id] = { error: message };
        }
      }
    };
    await attempt(['sandbox.cold_echo', 'sandbox.cold_echo_vs_bwrap'], () => coldEcho(ctx, client, n), (value) => {
      rows.push(...value.rows);
      data['sandbox.cold_echo'] = value.data;
    });
    await attempt(['sandbox.python_pass'], () => interpreterStart(ctx, client, n, 'sandbox.python_pass', 'kindling/python', ['python3', '-c', 'pass'], { file: HOST_PYTHON, args: ['-c', 'pass'] }), (value) => {
      rows.push(value.row);
      data['sandbox.python_pass'] = value.data;
    });
    await attempt(['sandbox.node_e0'], () => interpreterStart(ctx, client, n, 'sandbox.node_e0', 'kindling/node', ['node', '-e', '0'], { file: process.execPath, args: ['-e', '0'] }), (value) => {
      rows.push(value.row);
      data['sandbox.node_e0'] = value.data;
    });
    // The current runtimes (Debian trixie's images) against the same host interpreters.
    await attempt(['sandbox.python313_pass'], () => interpreterStart(ctx, client, n, 'sandbox.python313_pass', 'kindling/python3.13', ['python3', '-c', 'pass'], { file: HOST_PYTHON, args: ['-c', 'pass'] }), (value) => {
      rows.push(value.row);
      data['sandbox.python313_pass'] = value.data;
    });
    await attempt(['sandbox.node20_e0'], () => interpreterStart(ctx, client, n, 'sandbox.node20_e0', 'kindling/node20', ['node', '-e', '0'], { file: process.execPath, args: ['-e', '0'] }), (value) => {
      rows.push(value.row);
      data['sandbox.node20_e0'] = value.data;
    });
    // The TypeScript runtimes against the same binaries run on the host (they are not Debian packages: the image's own).
    for (const [id, runtime, args] of [['sandbox.deno_eval0', 'deno', ['eval', '0']], ['sandbox.bun_e0', 'bun', ['-e', '0']]] as const) {
      await attempt([id], () => interpreterStart(ctx, client, n, id, `kindling/${runtime}`, [runtime, ...args], { file: join(IMAGES_DIR, runtime, 'rootfs/usr/local/bin', runtime), args: [...args] }), (value) => {
        rows.push(value.row);
        data[id] = value.data;
      });
    }
    // Go against plain bwrap on the same root with an empty build cache: what compiling the standard library in every
    // fresh sandbox would cost without the image's cache.
    const goHello = `printf 'package main\\nimport "fmt"\\nfunc main() { fmt.Println(42) }\\n' > /tmp/m.go && go build -o /tmp/m /tmp/m.go && /tmp/m`;
    const goRoot = join(IMAGES_DIR, 'go', 'rootfs');
    const bareGo = ['--ro-bind', goRoot, '/', '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--clearenv', '--setenv', 'PATH', '/usr/bin:/bin', '--setenv', 'HOME', '/tmp', '--setenv', 'GOCACHE', '/tmp/cache', 'sh', '-c', goHello];
    await attempt(['sandbox.go_build_run'], () => interpreterStart(ctx, client, ctx.runsOverridden ? Math.min(5, n) : 5, 'sandbox.go_build_run', 'kindling/go', ['sh', '-c', goHello], { file: 'bwrap', args: bareGo }, ['go', 'version']), (value) => {
      rows.push(value.row);
      data['sandbox.go_build_run'] = value.data;
    });
    await attempt(['sandbox.stdin_1mib'], () => stdin1MiB(ctx, client, n), (value) => {
      rows.push(value.row);
      data['sandbox.stdin_1mib'] = value.data;
    });
    await attempt(['sandbox.stdin_100mib_in', 'sandbox.stdin_100mib_cat'], () => stdin100MiB(ctx, client, ctx.runsOverridden ? Math.min(3, n) : 3), (value) => {
      rows.push(...value.rows);
      data['sandbox.stdin_100mib'] = value.data;
    });
    return { rows, data };
  } finally {
    client.close();
    await server.stop();
  }
}
