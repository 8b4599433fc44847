import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BenchClient, type TimedExecute } from './lib/client.js';
import { BENCH_LABEL, type BenchContext, type GroupResult } from './lib/context.js';
import { DOCKER, dockerCli, sleep, timedSpawnOk } from './lib/proc.js';
import { launchServer, onCleanup, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, fmtSummary, inAlternateOrder, summarize } from './lib/stats.js';
import type { Row } from './lib/table.js';

const BASE = 'kindling/base';
const RUST = 'kindling/rust';
const ECHO = { image: BASE, command: ['echo', 'hi'], executor: 'docker' } as const;

export const RUST_FIB = `fn fib(n: u32) -> u64 {
    if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
}

fn main() {
    println!("{}", fib(30));
}
`;
/** The same compiler flags as Kindling's rust runtime (src/orchestrator/runtimes.ts). */
const RUSTC = 'rustc -C opt-level=1 -C debuginfo=0 -o /tmp/main /tmp/main.rs';

/** One API sample as stored in the JSON: client wall time plus what the server says about itself. */
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

const dockerRun = (args: string[], stdinFile?: string) =>
  timedSpawnOk(DOCKER, ['run', ...(stdinFile ? ['-i'] : []), '--rm', '--label', BENCH_LABEL, ...args], stdinFile ? { stdinFile } : {});

function expectStdout(actual: string | Buffer, expected: string, what: string): void {
  if (String(actual) !== expected) throw new Error(`${what}: expected stdout ${JSON.stringify(expected)}, got ${JSON.stringify(String(actual).slice(0, 200))}`);
}

function expectExecutor(timed: TimedExecute): TimedExecute {
  if (timed.result.executor !== 'docker') throw new Error(`expected the docker executor, the server used ${timed.result.executor}`);
  return timed;
}

const countCold = (samples: ApiSample[]): number => samples.filter((sample) => sample.coldStart).length;

/** Runs a scenario; a failure becomes an `error` row instead of ending the whole bench. */
async function guarded(ctx: BenchContext, id: string, scenario: string, target: string, body: () => Promise<{ row: Row; data: unknown }>): Promise<{ row: Row; data: unknown }> {
  try {
    return await body();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log(`  ${id} failed: ${message}`);
    return {
      row: { group: 'docker', id, scenario, kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', target, status: 'error' },
      data: { error: message },
    };
  }
}

async function requireImages(images: string[]): Promise<void> {
  const listed = await dockerCli(['images', '--format', '{{.Repository}}:{{.Tag}}']);
  const have = new Set(listed.split('\n').map((line) => line.trim()));
  const missing = images.filter((image) => !have.has(`${image}:latest`));
  if (missing.length > 0) throw new Error(`Docker images missing: ${missing.join(', ')} (build them with: node bin/kindling.js images build)`);
}

/** Row 1: true cold starts (server --prewarm 0) vs plain `docker run --rm`, alternated. */
async function coldStart(ctx: BenchContext, server: BenchServer, client: BenchClient, n: number) {
  const id = 'docker.cold_echo';
  const scenario = `Docker cold start, \`echo hi\` via API (--prewarm 0), n=${n}`;
  const target = 'median ≤ 0.8x `docker run --rm`';
  return guarded(ctx, id, scenario, target, async () => {
    ctx.log(`docker: cold start echo, ${n} runs each (server pid ${server.pid}, --prewarm 0)`);
    const warmup = { api: [] as ApiSample[], docker: [] as number[] };
    for (let i = 0; i < 2; i++) {
      warmup.api.push(apiSample(expectExecutor(await client.executeOk(ECHO))));
      warmup.docker.push((await dockerRun([BASE, 'echo', 'hi'])).ms);
    }
    const api: ApiSample[] = [];
    const docker: number[] = [];
    for (let i = 0; i < n; i++) {
      const runApi = async () => {
        const timed = expectExecutor(await client.executeOk(ECHO));
        expectStdout(timed.result.stdout, 'hi\n', 'API echo');
        api.push(apiSample(timed));
      };
      const runDocker = async () => {
        const run = await dockerRun([BASE, 'echo', 'hi']);
        expectStdout(run.stdout, 'hi\n', 'docker run echo');
        docker.push(run.ms);
      };
      await inAlternateOrder(i, runApi, runDocker);
    }
    const k = summarize(api.map((sample) => sample.ms));
    const b = summarize(docker);
    const ratio = k.median / b.median;
    const startMs = summarize(api.flatMap((sample) => (sample.timings ? [sample.timings.startMs] : [])));
    return {
      row: {
        group: 'docker', id, scenario, target,
        kindling: fmtSummary(k),
        baseline: `docker run --rm: ${fmtSummary(b)}`,
        ratio: fmtRatio(ratio),
        status: ratio <= 0.8 ? 'pass' : 'fail',
        note: `coldStart=true in ${countCold(api)}/${n}; server startMs median ${fmtMs(startMs.median)}; seed: 569 ms (macOS)`,
      },
      data: { api, docker, warmup, summary: { api: k, docker: b, ratio } },
    };
  });
}

/** Row 2: prewarmed starts (default pool), sequential with a pause so the pool refills; baseline `docker exec`. */
async function prewarmed(ctx: BenchContext, client: BenchClient, n: number, dockerRunMedian: number | null) {
  const id = 'docker.prewarmed_echo';
  const scenario = `Docker prewarmed start, \`echo hi\` via API (default prewarm), n=${n}`;
  const target = '— (no target set)';
  return guarded(ctx, id, scenario, target, async () => {
    ctx.log(`docker: prewarmed echo, ${n} runs`);
    const started = await dockerCli(['run', '-d', '--rm', '--label', BENCH_LABEL, BASE, 'sleep', '3600']);
    const containerId = started.trim();
    const unregister = onCleanup(async () => {
      await dockerCli(['rm', '-f', containerId]).catch(() => '');
    });
    try {
      // The first call makes the shape hot; then the pool fills.
      const warmup = apiSample(expectExecutor(await client.executeOk(ECHO)));
      await sleep(4000);
      const api: ApiSample[] = [];
      const exec: number[] = [];
      for (let i = 0; i < n; i++) {
        const timed = expectExecutor(await client.executeOk(ECHO));
        expectStdout(timed.result.stdout, 'hi\n', 'API echo');
        api.push(apiSample(timed));
        await sleep(500);
        const run = await timedSpawnOk(DOCKER, ['exec', containerId, 'echo', 'hi']);
        expectStdout(run.stdout, 'hi\n', 'docker exec echo');
        exec.push(run.ms);
        await sleep(400);
      }
      const k = summarize(api.map((sample) => sample.ms));
      const b = summarize(exec);
      const hits = n - countCold(api);
      return {
        row: {
          group: 'docker', id, scenario, target,
          kindling: fmtSummary(k),
          baseline: `docker exec (running container): ${fmtSummary(b)}`,
          ratio: fmtRatio(k.median / b.median),
          status: 'info',
          note: `prewarmed ${hits}/${n}${dockerRunMedian !== null ? `; ${fmtRatio(k.median / dockerRunMedian)} of the \`docker run --rm\` median above` : ''}`,
        },
        data: { api, dockerExec: exec, warmup, summary: { api: k, dockerExec: b } },
      };
    } finally {
      await dockerCli(['rm', '-f', containerId]).catch(() => '');
      unregister();
    }
  });
}

/** Row 3: 5 x `sleep 1` in parallel, wall time per round; baseline 5 parallel `docker run --rm`. */
async function parallelSleep(ctx: BenchContext, client: BenchClient, rounds: number) {
  const id = 'docker.parallel_sleep';
  const scenario = `5 x \`sleep 1\` in parallel via API (default prewarm), ${rounds} rounds`;
  const target = 'wall < 1.3 s';
  return guarded(ctx, id, scenario, target, async () => {
    ctx.log(`docker: 5 x sleep 1 in parallel, ${rounds} rounds`);
    const apiRounds: { wallMs: number; calls: ApiSample[] }[] = [];
    const dockerRounds: { wallMs: number; calls: number[] }[] = [];
    const spec = { image: BASE, command: ['sleep', '1'], executor: 'docker' };
    for (let round = 0; round < rounds; round++) {
      await sleep(4000); // the pool refills between rounds
      let begin = performance.now();
      const calls = await Promise.all(Array.from({ length: 5 }, () => client.executeOk(spec).then(expectExecutor)));
      apiRounds.push({ wallMs: performance.now() - begin, calls: calls.map(apiSample) });
      await sleep(1000);
      begin = performance.now();
      const runs = await Promise.all(Array.from({ length: 5 }, () => dockerRun([BASE, 'sleep', '1'])));
      dockerRounds.push({ wallMs: performance.now() - begin, calls: runs.map((run) => run.ms) });
    }
    const k = summarize(apiRounds.map((round) => round.wallMs));
    const b = summarize(dockerRounds.map((round) => round.wallMs));
    const cold = apiRounds.map((round) => countCold(round.calls));
    return {
      row: {
        group: 'docker', id, scenario, target,
        kindling: `median ${fmtMs(k.median)} (min ${fmtMs(k.min)}, max ${fmtMs(k.max)})`,
        baseline: `5 x docker run --rm: median ${fmtMs(b.median)}`,
        ratio: fmtRatio(k.median / b.median),
        status: k.median < 1300 ? 'pass' : 'fail',
        note: `cold calls per round: ${cold.join(', ')} (the rest prewarmed); seed: 2.77 s`,
      },
      data: { api: apiRounds, docker: dockerRounds, summary: { api: k, docker: b } },
    };
  });
}

/** Row 4: Rust compile + run of fib(30) via `runtime: 'rust'`; baseline the same rustc + run in plain `docker run`. */
async function rustFib(ctx: BenchContext, client: BenchClient, runs: number) {
  const id = 'docker.rust_fib';
  const scenario = `Rust compile + run, fib(30) via API (runtime rust), n=${runs}`;
  const target = 'median < 1.5 s (seed: 1.04 s)';
  return guarded(ctx, id, scenario, target, async () => {
    ctx.log(`docker: rust fib(30), ${runs} runs each`);
    const source = join(ctx.workDir, 'main.rs');
    await writeFile(source, RUST_FIB);
    const spec = { runtime: 'rust', code: RUST_FIB, executor: 'docker' };
    const baselineArgs = [RUST, 'sh', '-c', `cat > /tmp/main.rs && ${RUSTC} && exec /tmp/main`];
    const firstApi = expectExecutor(await client.executeOk(spec));
    expectStdout(firstApi.result.stdout, '832040\n', 'API rust');
    const firstDocker = await dockerRun(baselineArgs, source);
    expectStdout(firstDocker.stdout, '832040\n', 'docker run rust');
    const api: ApiSample[] = [];
    const docker: number[] = [];
    for (let i = 0; i < runs; i++) {
      await sleep(2500); // the rust shape's pool refills
      const timed = expectExecutor(await client.executeOk(spec));
      expectStdout(timed.result.stdout, '832040\n', 'API rust');
      api.push(apiSample(timed));
      const run = await dockerRun(baselineArgs, source);
      expectStdout(run.stdout, '832040\n', 'docker run rust');
      docker.push(run.ms);
    }
    const k = summarize(api.map((sample) => sample.ms));
    const b = summarize(docker);
    const runMs = summarize(api.flatMap((sample) => (sample.timings ? [sample.timings.runMs] : [])));
    return {
      row: {
        group: 'docker', id, scenario, target,
        kindling: fmtSummary(k),
        baseline: `docker run rustc + run: ${fmtSummary(b)}`,
        ratio: fmtRatio(k.median / b.median),
        status: k.median < 1500 ? 'pass' : 'fail',
        note: `first (cold) call ${fmtMs(firstApi.ms)}; prewarmed ${runs - countCold(api)}/${runs}; compile+run inside (runMs) median ${fmtMs(runMs.median)}; Kindling limits rust to 1 CPU, plain docker run has no limit`,
      },
      data: { api, docker, warmup: { api: apiSample(firstApi), docker: firstDocker.ms }, summary: { api: k, docker: b } },
    };
  });
}

/** Row 5: 1 MiB of random bytes through `cat`, byte-exact, and what it adds to the echo case (both prewarmed). */
async function stdinRoundTrip(ctx: BenchContext, client: BenchClient, n: number) {
  const id = 'docker.stdin_1mib';
  const scenario = `1 MiB stdin round trip through \`cat\` via API (base64 both ways), n=${n}`;
  const target = 'adds < 100 ms to echo';
  return guarded(ctx, id, scenario, target, async () => {
    ctx.log(`docker: 1 MiB stdin round trip, ${n} runs each`);
    const payload = randomBytes(1024 * 1024);
    const file = join(ctx.workDir, 'payload-1mib.bin');
    await writeFile(file, payload);
    const catSpec = { image: BASE, command: ['cat'], stdinBase64: payload.toString('base64'), outputEncoding: 'base64', executor: 'docker' };
    await sleep(3000);
    const apiEcho: ApiSample[] = [];
    const apiCat: ApiSample[] = [];
    const dockerEcho: number[] = [];
    const dockerCat: number[] = [];
    let exactApi = 0;
    let exactDocker = 0;
    for (let i = 0; i < n; i++) {
      const runApi = async () => {
        const echo = expectExecutor(await client.executeOk(ECHO));
        expectStdout(echo.result.stdout, 'hi\n', 'API echo');
        apiEcho.push(apiSample(echo));
        await sleep(600);
        const cat = expectExecutor(await client.executeOk(catSpec));
        if (Buffer.from(cat.result.stdout, 'base64').equals(payload)) exactApi++;
        apiCat.push(apiSample(cat));
        await sleep(600);
      };
      const runDocker = async () => {
        const echo = await dockerRun([BASE, 'echo', 'hi']);
        dockerEcho.push(echo.ms);
        const cat = await dockerRun([BASE, 'cat'], file);
        if (cat.stdout.equals(payload)) exactDocker++;
        dockerCat.push(cat.ms);
      };
      await inAlternateOrder(i, runApi, runDocker);
    }
    const ke = summarize(apiEcho.map((sample) => sample.ms));
    const kc = summarize(apiCat.map((sample) => sample.ms));
    const be = summarize(dockerEcho);
    const bc = summarize(dockerCat);
    const overhead = kc.median - ke.median;
    const baselineOverhead = bc.median - be.median;
    const exact = exactApi === n && exactDocker === n;
    const cold = countCold(apiEcho) + countCold(apiCat);
    return {
      row: {
        group: 'docker', id, scenario, target,
        kindling: `+${fmtMs(overhead)} (cat ${fmtMs(kc.median)}, p95 ${fmtMs(kc.p95)}; echo ${fmtMs(ke.median)})`,
        baseline: `docker run -i cat < file: +${fmtMs(baselineOverhead)} (cat ${fmtMs(bc.median)}; echo ${fmtMs(be.median)})`,
        ratio: baselineOverhead >= 5 ? fmtRatio(overhead / baselineOverhead) : 'n/a (baseline adds < 5 ms)',
        status: exact && overhead < 100 ? 'pass' : 'fail',
        note: `byte-exact: API ${exactApi}/${n}, docker ${exactDocker}/${n}; cold calls ${cold}/${2 * n}; overhead = median(cat) − median(echo); seed: > 60 s`,
      },
      data: { apiEcho, apiCat, dockerEcho, dockerCat, exactApi, exactDocker, summary: { apiEcho: ke, apiCat: kc, dockerEcho: be, dockerCat: bc, overhead, baselineOverhead } },
    };
  });
}

export async function runDockerGroup(ctx: BenchContext): Promise<GroupResult> {
  await requireImages([BASE, RUST]);
  const n = ctx.runs.docker;
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const record = (result: { row: Row; data: unknown }): void => {
    rows.push(result.row);
    data[result.row.id] = result.data;
  };

  let dockerRunMedian: number | null = null;
  {
    const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'docker', prewarm: 0 });
    const client = new BenchClient(server.url);
    try {
      const result = await coldStart(ctx, server, client, n);
      record(result);
      const summary = (result.data as { summary?: { docker: { median: number } } }).summary;
      dockerRunMedian = summary?.docker.median ?? null;
    } finally {
      client.close();
      await server.stop();
    }
  }
  {
    const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'docker' });
    const client = new BenchClient(server.url);
    try {
      ctx.log(`docker: server with default prewarm, pid ${server.pid}`);
      record(await prewarmed(ctx, client, n, dockerRunMedian));
      record(await parallelSleep(ctx, client, ctx.runsOverridden ? Math.min(3, n) : 3));
      record(await rustFib(ctx, client, ctx.runsOverridden ? Math.min(5, n) : 5));
      record(await stdinRoundTrip(ctx, client, n));
    } finally {
      client.close();
      await server.stop();
    }
  }
  return { rows, data };
}
