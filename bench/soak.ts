/**
 * `npm run soak [-- --total 10000 --clients 64 --tenants 4 --executor sandbox]`: a long mixed load across tenants
 * against a real server in a child process. Not part of CI (minutes of load), but it fails (exit 1) when anything is
 * lost, misattributed or leaked, so it can gate a release.
 *
 * Each tenant deploys a handler with the SAME name whose code answers with that tenant's name and the request's
 * nonce; clients use their tenant's key. A result is misattributed when it carries another tenant's name or another
 * request's nonce; it is lost when an accepted request never produces a result. The mix: warm handler invocations
 * (sync), one-off executions (`POST /v1/execute`), async invocations with an idempotency key that are awaited, and
 * isolation probes (another tenant's key reading an async invocation must get 404).
 *
 * Prints a markdown summary and writes it as JSON under bench/results/ (soak-*.json).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { sendRaw, type RawReply } from './lib/raw-http.js';
import { launchServer, runCleanups, type BenchServer } from './lib/server.js';
import { dockerCli, sleep } from './lib/proc.js';
import { quantile } from './lib/stats.js';

interface Options {
  total: number;
  clients: number;
  tenants: number;
  executor: 'sandbox' | 'docker';
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      total: { type: 'string', default: '10000' },
      clients: { type: 'string', default: '64' },
      tenants: { type: 'string', default: '4' },
      executor: { type: 'string', default: 'sandbox' },
    },
    strict: true,
  });
  const whole = (name: string, value: string, min: number): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number >= ${min}, got "${value}"`);
    return n;
  };
  if (values.executor !== 'sandbox' && values.executor !== 'docker') throw new Error(`--executor must be sandbox or docker, got "${values.executor}"`);
  return {
    total: whole('total', values.total, 1),
    clients: whole('clients', values.clients, 1),
    tenants: whole('tenants', values.tenants, 2),
    executor: values.executor,
  };
}

type Reply = RawReply;

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

function send(base: URL, method: string, path: string, key: string, body: Buffer | null, headers: Record<string, string> = {}): Promise<Reply> {
  return sendRaw(agent, base, method, path, body, { authorization: `Bearer ${key}`, ...headers });
}

const json = (reply: Reply): Record<string, unknown> => JSON.parse(reply.body.toString('utf8')) as Record<string, unknown>;
const errorCode = (reply: Reply): string => {
  try {
    const code = (json(reply).error as { code?: string } | undefined)?.code;
    return code ? `${reply.status} ${code}` : `${reply.status}`;
  } catch {
    return `${reply.status} (not JSON)`;
  }
};

/** Counts of what went wrong, by kind; the soak fails when any of lost / misattributed / leaked is non-zero. */
class Tally {
  readonly errors = new Map<string, number>();
  readonly latencyMs: Record<'invoke' | 'execute' | 'async', number[]> = { invoke: [], execute: [], async: [] };
  lost = 0;
  misattributed = 0;
  isolationBreaches = 0;
  done = 0;
  /** Verified results per tenant and usage function (`whoami` for invocations, `_execute` for executions). */
  readonly verifiedBy = new Map<string, number>();
  retried429 = 0;
  readonly problems: string[] = [];

  readonly errorSamples = new Map<string, string>();

  error(code: string, reply?: Reply): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
    if (reply && !this.errorSamples.has(code)) this.errorSamples.set(code, reply.body.toString('utf8').slice(0, 300));
  }

  problem(kind: 'lost' | 'misattributed' | 'isolation', detail: string): void {
    if (kind === 'lost') this.lost++;
    else if (kind === 'misattributed') this.misattributed++;
    else this.isolationBreaches++;
    if (this.problems.length < 20) this.problems.push(`${kind}: ${detail}`);
  }
}

interface Tenant {
  name: string;
  key: string;
}

/** Sends until the answer is not a 429 (quota or queue): a 429 is a refusal, not an accepted request, so it is retried. */
async function sendAccepted(tally: Tally, base: URL, method: string, path: string, key: string, body: Buffer | null, headers: Record<string, string> = {}): Promise<Reply> {
  for (let attempt = 0; ; attempt++) {
    const reply = await send(base, method, path, key, body, headers);
    if (reply.status !== 429 || attempt >= 50) return reply;
    tally.retried429++;
    tally.error(errorCode(reply), reply);
    const retryAfterS = Number(reply.headers['retry-after'] ?? 1);
    await sleep(Math.min(2000, Math.max(50, retryAfterS * 1000 * Math.random())));
  }
}

async function invokeSync(tally: Tally, base: URL, tenant: Tenant, nonce: string): Promise<void> {
  const started = performance.now();
  const reply = await sendAccepted(tally, base, 'POST', '/v1/functions/whoami/invoke', tenant.key, Buffer.from(nonce), { 'content-type': 'text/plain' });
  if (reply.status !== 200 || reply.headers['x-kindling-exit-code'] !== '0') {
    tally.error(reply.status === 200 ? `200 exit ${String(reply.headers['x-kindling-exit-code'])}` : errorCode(reply));
    if (reply.status === 200 || reply.status >= 500) tally.problem('lost', `invoke ${tenant.name} ${nonce}: ${reply.status} ${reply.body.toString('utf8').slice(0, 200)}`);
    return;
  }
  tally.latencyMs.invoke.push(performance.now() - started);
  checkAnswer(tally, tenant, nonce, reply.body.toString('utf8'), 'invoke');
}

function checkAnswer(tally: Tally, tenant: Tenant, nonce: string, text: string, via: 'invoke' | 'execute' | 'async'): void {
  let answer: { tenant?: string; nonce?: string };
  try {
    answer = JSON.parse(text) as typeof answer;
  } catch {
    tally.problem('misattributed', `${via} ${tenant.name} ${nonce}: not the function's JSON: ${text.slice(0, 200)}`);
    return;
  }
  if (answer.tenant !== tenant.name || answer.nonce !== nonce) {
    tally.problem('misattributed', `${via} of ${tenant.name}/${nonce} answered ${answer.tenant}/${answer.nonce}`);
    return;
  }
  tally.done++;
  const key = `${tenant.name}/${via === 'execute' ? '_execute' : 'whoami'}`;
  tally.verifiedBy.set(key, (tally.verifiedBy.get(key) ?? 0) + 1);
}

async function execute(tally: Tally, base: URL, tenant: Tenant, nonce: string, executor: string): Promise<void> {
  const started = performance.now();
  const spec = { executor, image: 'kindling/base', command: ['printf', '{"tenant":"%s","nonce":"%s"}', tenant.name, nonce], timeoutMs: 10_000 };
  const reply = await sendAccepted(tally, base, 'POST', '/v1/execute', tenant.key, Buffer.from(JSON.stringify(spec)), { 'content-type': 'application/json' });
  if (reply.status !== 200) {
    tally.error(errorCode(reply), reply);
    if (reply.status >= 500) tally.problem('lost', `execute ${tenant.name} ${nonce}: ${reply.status} ${reply.body.toString('utf8').slice(0, 200)}`);
    return;
  }
  const result = json(reply) as { exitCode: number; stdout: string };
  if (result.exitCode !== 0) {
    tally.error(`200 exit ${result.exitCode}`);
    tally.problem('lost', `execute ${tenant.name} ${nonce}: exit ${result.exitCode}`);
    return;
  }
  tally.latencyMs.execute.push(performance.now() - started);
  checkAnswer(tally, tenant, nonce, result.stdout, 'execute');
}

async function invokeAsync(tally: Tally, base: URL, tenant: Tenant, other: Tenant, nonce: string): Promise<void> {
  const started = performance.now();
  const headers = { 'content-type': 'text/plain', 'x-kindling-async': 'true', 'idempotency-key': nonce };
  const accepted = await sendAccepted(tally, base, 'POST', '/v1/functions/whoami/invoke', tenant.key, Buffer.from(nonce), headers);
  if (accepted.status !== 202) {
    tally.error(errorCode(accepted), accepted);
    if (accepted.status >= 500) tally.problem('lost', `async ${tenant.name} ${nonce}: ${accepted.status}`);
    return;
  }
  const id = json(accepted).invocationId as string;
  // The same idempotency key again must return the same invocation, never a second run.
  const again = await sendAccepted(tally, base, 'POST', '/v1/functions/whoami/invoke', tenant.key, Buffer.from(nonce), headers);
  if (again.status !== 202 && again.status !== 200) tally.error(errorCode(again));
  else if (json(again).invocationId !== id) tally.problem('misattributed', `idempotency key ${nonce} gave ${String(json(again).invocationId)} after ${id}`);

  const deadline = Date.now() + 120_000;
  for (;;) {
    const state = await send(base, 'GET', `/v1/invocations/${id}`, tenant.key, null);
    if (state.status !== 200) {
      tally.problem('lost', `async ${id} of ${tenant.name}: GET answered ${state.status}`);
      return;
    }
    const status = json(state).status as string;
    if (status === 'succeeded' || status === 'failed') {
      if (status === 'failed') {
        tally.error(`async failed: ${String(json(state).error)}`);
        tally.problem('lost', `async ${id} of ${tenant.name} failed: ${String(json(state).error)}`);
        return;
      }
      break;
    }
    if (Date.now() > deadline) {
      tally.problem('lost', `async ${id} of ${tenant.name} still ${status} after 120 s`);
      return;
    }
    await sleep(25);
  }
  tally.latencyMs.async.push(performance.now() - started);
  const output = await send(base, 'GET', `/v1/invocations/${id}/output`, tenant.key, null);
  if (output.status !== 200) {
    tally.problem('lost', `async ${id} output answered ${output.status}`);
    return;
  }
  checkAnswer(tally, tenant, nonce, output.body.toString('utf8'), 'async');
  // Another tenant must not even learn that the id exists.
  const probe = await send(base, 'GET', `/v1/invocations/${id}`, other.key, null);
  if (probe.status !== 404) tally.problem('isolation', `tenant ${other.name} read ${tenant.name}'s invocation ${id}: ${probe.status}`);
}

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}

/** What of this server's might outlive it: labelled containers, owner cgroups, mounts under the data dir. */
async function leftovers(server: BenchServer): Promise<string[]> {
  const found: string[] = [];
  const ownerId = server.ownerId;
  const containers = await dockerCli(['ps', '-aq', '--filter', `label=dev.kindling.owner=${ownerId}`]).catch(() => '');
  for (const id of containers.split('\n').map((line) => line.trim()).filter(Boolean)) found.push(`container ${id}`);
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 4) return;
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const path = join(dir, entry.name);
      if (entry.name === ownerId) {
        const inside = (await readdir(path, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory());
        for (const child of inside) found.push(`cgroup ${join(path, child.name)}`);
      } else await walk(path, depth + 1);
    }
  };
  await walk('/sys/fs/cgroup', 0);
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mounts.split('\n')) if (line.includes(server.dataDir)) found.push(`mount ${line.split(' ')[4]}`);
  return found;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
  const log = (message: string): void => void process.stderr.write(`[soak] ${message}\n`);
  const adminKey = `kdl_soak_admin_${randomBytes(24).toString('hex')}`;
  const server = await launchServer({
    repoRoot,
    executor: options.executor,
    env: { KINDLING_ADMIN_KEY: adminKey },
    extraArgs: ['--max-concurrent', '32', '--max-queued', '1024', '--async-concurrency', '8'],
  });
  const base = new URL(server.url);
  log(`server pid ${server.pid} at ${server.url}, data dir ${server.dataDir}`);
  try {
    const tenants: Tenant[] = [];
    for (let i = 0; i < options.tenants; i++) {
      const name = `soak-${i}`;
      const made = await send(base, 'POST', '/v1/tenants', adminKey, Buffer.from(JSON.stringify({ name })), { 'content-type': 'application/json' });
      if (made.status !== 201) throw new Error(`POST /v1/tenants answered ${made.status}: ${made.body.toString('utf8')}`);
      tenants.push({ name, key: json(made).apiKey as string });
    }
    for (const tenant of tenants) {
      // The same function name in every tenant; the code knows only its own tenant's name.
      const code = `export const handler = (body) => JSON.stringify({ tenant: ${JSON.stringify(tenant.name)}, nonce: body.toString('utf8') });`;
      const spec = { runtime: 'node', code, handler: 'handler', minWarm: 1, maxConcurrency: 4, maxQueued: 1000 };
      const put = await send(base, 'PUT', '/v1/functions/whoami', tenant.key, Buffer.from(JSON.stringify(spec)), { 'content-type': 'application/json' });
      if (put.status !== 200 && put.status !== 201) throw new Error(`deploy for ${tenant.name} answered ${put.status}: ${put.body.toString('utf8')}`);
    }
    // Warm-up, then the RSS baseline.
    const warm = new Tally();
    for (const tenant of tenants) await invokeSync(warm, base, tenant, `warmup-${tenant.name}`);
    if (warm.done !== tenants.length) throw new Error(`warm-up failed: ${warm.problems.join('; ')} ${[...warm.errors].join(', ')}`);
    const rssBefore = await rssBytes(server.pid);

    const tally = new Tally();
    let next = 0;
    let peakRss = rssBefore;
    const sampler = setInterval(() => void rssBytes(server.pid).then((value) => (peakRss = Math.max(peakRss, value)), () => undefined), 250);
    const progress = setInterval(() => log(`${next}/${options.total} started, ${tally.done} verified, errors ${[...tally.errors].map(([k, v]) => `${k}=${v}`).join(' ') || 'none'}`), 10_000);
    const started = performance.now();
    const client = async (clientIndex: number): Promise<void> => {
      const tenant = tenants[clientIndex % tenants.length]!;
      const other = tenants[(clientIndex + 1) % tenants.length]!;
      for (;;) {
        const index = next++;
        if (index >= options.total) return;
        const nonce = `${clientIndex}-${index}-${randomBytes(6).toString('hex')}`;
        const kind = index % 20;
        try {
          if (kind < 14) await invokeSync(tally, base, tenant, nonce);
          else if (kind < 17) await execute(tally, base, tenant, nonce, options.executor);
          else await invokeAsync(tally, base, tenant, other, nonce);
        } catch (error) {
          tally.error(`client error: ${(error as Error).message}`);
          tally.problem('lost', `${nonce}: ${(error as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: options.clients }, (_, i) => client(i)));
    const elapsedS = (performance.now() - started) / 1000;
    clearInterval(sampler);
    clearInterval(progress);
    await sleep(1000);
    const rssAfter = await rssBytes(server.pid);

    // Metering is attributed too: each tenant's usage counts exactly its own invocations (plus its warm-up call).
    const usage: Record<string, unknown> = {};
    let meteringMismatches: string[] = [];
    for (let attempt = 0; attempt < 20; attempt++) {
      meteringMismatches = [];
      for (const tenant of tenants) {
        const reply = await send(base, 'GET', '/v1/usage?groupBy=function', tenant.key, null);
        usage[tenant.name] = reply.status === 200 ? json(reply) : `HTTP ${reply.status}`;
        const rows = reply.status === 200 ? ((json(reply).rows ?? []) as Array<{ tenant: string; function: string; invocations: number }>) : [];
        for (const row of rows) if (row.tenant !== tenant.name) meteringMismatches.push(`${tenant.name}'s usage shows a row of ${row.tenant}`);
        for (const fn of ['whoami', '_execute']) {
          const expected = (tally.verifiedBy.get(`${tenant.name}/${fn}`) ?? 0) + (fn === 'whoami' ? 1 : 0);
          const metered = rows.filter((row) => row.function === fn).reduce((sum, row) => sum + row.invocations, 0);
          if (metered !== expected) meteringMismatches.push(`${tenant.name}/${fn}: metered ${metered}, verified ${expected}`);
        }
      }
      if (meteringMismatches.length === 0) break;
      await sleep(250); // usage records are written after the response; give the last ones a moment
    }
    for (const mismatch of meteringMismatches) tally.problem('misattributed', `metering: ${mismatch}`);

    await server.stop();
    const leaked = await leftovers(server);

    const pct = (samples: number[], q: number): number => quantile([...samples].sort((a, b) => a - b), q);
    const stats = (samples: number[]): string =>
      samples.length === 0 ? 'n/a' : `n=${samples.length}, p50 ${pct(samples, 0.5).toFixed(1)} ms, p99 ${pct(samples, 0.99).toFixed(1)} ms`;
    const errorsByCode = Object.fromEntries(tally.errors);
    const summary = {
      at: new Date().toISOString(),
      options,
      elapsedS,
      throughputPerS: options.total / elapsedS,
      verified: tally.done,
      lost: tally.lost,
      misattributed: tally.misattributed,
      isolationBreaches: tally.isolationBreaches,
      retried429: tally.retried429,
      errorsByCode,
      latency: { invoke: stats(tally.latencyMs.invoke), execute: stats(tally.latencyMs.execute), async: stats(tally.latencyMs.async) },
      rssBytes: { before: rssBefore, after: rssAfter, peak: peakRss },
      leaked,
      usage,
      problems: tally.problems,
      errorSamples: Object.fromEntries(tally.errorSamples),
    };
    const MiB = 1024 * 1024;
    console.log(`## Soak: ${options.total} operations, ${options.clients} clients, ${options.tenants} tenants, ${options.executor}\n`);
    console.log('| figure | value |\n|---|---|');
    console.log(`| wall time | ${elapsedS.toFixed(1)} s |`);
    console.log(`| throughput | ${summary.throughputPerS.toFixed(0)} operations/s |`);
    console.log(`| verified results | ${tally.done} / ${options.total} |`);
    console.log(`| lost / misattributed / isolation breaches | ${tally.lost} / ${tally.misattributed} / ${tally.isolationBreaches} |`);
    console.log(`| warm invoke latency | ${summary.latency.invoke} |`);
    console.log(`| execute latency | ${summary.latency.execute} |`);
    console.log(`| async submit → result | ${summary.latency.async} |`);
    console.log(`| errors by code | ${Object.entries(errorsByCode).map(([k, v]) => `${k}: ${v}`).join(', ') || 'none'} |`);
    console.log(`| 429s retried | ${tally.retried429} |`);
    console.log(`| server RSS before / after / peak | ${(rssBefore / MiB).toFixed(0)} / ${(rssAfter / MiB).toFixed(0)} / ${(peakRss / MiB).toFixed(0)} MiB |`);
    console.log(`| sandboxes, cgroups, mounts left after stop | ${leaked.length} |`);
    for (const [code, sample] of tally.errorSamples) console.log(`\n- first ${code}: ${sample}`);
    for (const problem of tally.problems) console.log(`\n- ${problem}`);
    for (const item of leaked.slice(0, 20)) console.log(`\n- leaked: ${item}`);
    const resultsDir = join(repoRoot, 'bench', 'results');
    await mkdir(resultsDir, { recursive: true });
    const file = join(resultsDir, `soak-${summary.at.replace(/[:.]/g, '-')}.json`);
    await writeFile(file, `${JSON.stringify(summary, null, 2)}\n`);
    log(`wrote ${file}`);
    const ok = tally.lost === 0 && tally.misattributed === 0 && tally.isolationBreaches === 0 && leaked.length === 0 && tally.done === options.total;
    return ok ? 0 : 1;
  } finally {
    await server.stop();
  }
}

main()
  .then(async (code) => {
    await runCleanups();
    agent.destroy();
    process.exitCode = code;
  })
  .catch(async (error: unknown) => {
    console.error(`soak failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    await runCleanups();
    agent.destroy();
    process.exitCode = 2;
  });
