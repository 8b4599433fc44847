/**
 * Density (issue 19): what one idle warm sandbox costs, and how many a server holds warm.
 * - Idle warm cost per runtime: a python and a node handler, each invoked once so that one warm sandbox exists, then
 *   left idle: PSS/USS summed over every process of its cgroup (smaps_rollup), the cgroup's charged memory, and its
 *   CPU over an idle window. A command function holds no sandbox between invocations; what waits for its next one is
 *   a prewarmed launcher (a cgroup with a root shell), measured the same way. Baseline: the same interpreter idle in
 *   plain bwrap on the same rootfs.
 * - Density: N distinct python handlers, then N/2 node handlers, each on a server with its default limits, each
 *   warmed in turn, then each invoked again: how many answered warm (x-kindling-cold-start: false), the p99 of that
 *   round, what one idle sandbox costs with all of them alive, the server's RSS growth per warm sandbox, the limits
 *   that bound the count, and the machine's counts (pids, fds, cgroups) at the end.
 */
import { writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { DEFAULT_FUNCTION_POOLS, warmCapacityDefaults } from '../src/server-defaults.js';
import { machineFacts } from '../src/server.js';
import { bareIdleMemory, rootfsOf, timedRequest, type Outcome } from './lib/bare.js';
import { cgroupCpuUsec, cgroupMemoryBytes, cgroupPids, cgroupProcMemory, cmdline, machineCounts, ownerCgroups, statusKiB } from './lib/cgroup-probe.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { sleep } from './lib/proc.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, quantile } from './lib/stats.js';
import { lineChart } from './lib/svg.js';
import type { Row } from './lib/table.js';

const MiB = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;
const TIMEOUT_MS = 120_000;

/** The server's cgroups whose processes match `marker` in their command line (the runtime's wrapper, or the launcher's shell). */
function cgroupsRunning(server: BenchServer, marker: (cmd: string) => boolean): string[] {
  return ownerCgroups(server.ownerId).filter((name) => cgroupPids(server.ownerId, name).some((pid) => marker(cmdline(pid))));
}

const MARKERS = {
  python: (cmd: string): boolean => cmd.includes('python_wrapper'),
  node: (cmd: string): boolean => cmd.includes('node-wrapper'),
  launcher: (cmd: string): boolean => cmd === '/bin/sh -s',
};

interface IdleCost {
  cgroups: number;
  pssKiB: number;
  ussKiB: number;
  rssKiB: number;
  pids: number;
  chargedKiB: number;
  cpuMsPerMin: number;
}

/** The mean over `names` of their processes' memory, charged memory, and CPU used over `idleMs`. */
async function idleCost(server: BenchServer, names: string[], idleMs: number): Promise<IdleCost> {
  const cpuBefore = names.map((name) => cgroupCpuUsec(server.ownerId, name) ?? Number.NaN);
  await sleep(idleMs);
  const cpuAfter = names.map((name) => cgroupCpuUsec(server.ownerId, name) ?? Number.NaN);
  const procs = names.map((name) => cgroupProcMemory(server.ownerId, name));
  const charged = names.map((name) => (cgroupMemoryBytes(server.ownerId, name) ?? Number.NaN) / 1024);
  const n = Math.max(1, names.length);
  const mean = (values: number[]): number => values.reduce((s, v) => s + v, 0) / n;
  const cpuUsec = mean(cpuAfter.map((after, i) => after - (cpuBefore[i] as number)));
  return {
    cgroups: names.length,
    pssKiB: mean(procs.map((p) => p.pssKiB)),
    ussKiB: mean(procs.map((p) => p.ussKiB)),
    rssKiB: mean(procs.map((p) => p.rssKiB)),
    pids: mean(procs.map((p) => p.pids)),
    chargedKiB: mean(charged),
    cpuMsPerMin: (cpuUsec / 1000) * (60_000 / idleMs),
  };
}

export async function runDensityGroup(ctx: BenchContext): Promise<GroupResult> {
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const idleMs = ctx.scale.idleMs;
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const auth = (key?: string): Record<string, string> => (key === undefined ? {} : { authorization: `Bearer ${key}` });
  const deploy = async (server: BenchServer, name: string, spec: Record<string, unknown>, key?: string): Promise<void> => {
    const out = await timedRequest(agent, new URL(server.url), 'PUT', `/v1/functions/${name}`, Buffer.from(JSON.stringify(spec)), TIMEOUT_MS, { 'content-type': 'application/json', ...auth(key) });
    if (out.status >= 300) throw new Error(`deploy ${name}: ${out.status} ${out.body.slice(0, 300)}`);
  };
  const invoke = async (server: BenchServer, name: string, key?: string): Promise<Outcome> => {
    const out = await timedRequest(agent, new URL(server.url), 'POST', `/v1/functions/${name}/invoke`, Buffer.from('ping'), TIMEOUT_MS, { 'content-type': 'application/octet-stream', ...auth(key) });
    if (out.status !== 200 || out.body !== 'ping') throw new Error(`invoke ${name}: ${out.status} ${out.hung ? '(no answer)' : out.body.slice(0, 300)}`);
    return out;
  };
  const HANDLERS = {
    python: { runtime: 'python', code: 'def handler(body):\n    return body\n', handler: 'handler' },
    node: { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler' },
  };

  // Part 1: one warm sandbox per runtime. Generic (code-less) sandboxes are off so that the only runtime processes
  // are the handlers'; one prewarmed launcher stands in for what a command function's next invocation takes.
  const costServer = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 1, extraArgs: ['--generic-sandboxes', '0'] });
  try {
    const bare = {
      python: await bareIdleMemory(rootfsOf('python'), ['python3', '-c', 'import time; time.sleep(60)']),
      node: await bareIdleMemory(rootfsOf('node'), ['node', '-e', 'setTimeout(() => {}, 60000)']),
      launcher: await bareIdleMemory(rootfsOf('base'), ['sh', '-c', 'sleep 60']),
    };
    data['density.bare'] = bare;
    const costs: Record<string, IdleCost> = {};
    for (const runtime of ['python', 'node'] as const) {
      await deploy(costServer, `idle-${runtime}`, HANDLERS[runtime]);
      const first = await invoke(costServer, `idle-${runtime}`);
      if (first.headers['x-kindling-cold-start'] !== 'true') throw new Error(`the first invocation of idle-${runtime} was not a cold start`);
      const names = cgroupsRunning(costServer, MARKERS[runtime]);
      if (names.length !== 1) throw new Error(`expected one warm ${runtime} sandbox, found ${names.length} cgroups running its wrapper`);
      ctx.log(`density: idle ${runtime} handler sandbox ${names[0]}: ${idleMs} ms idle window`);
      costs[runtime] = await idleCost(costServer, names, idleMs);
    }
    await deploy(costServer, 'idle-command', { image: 'kindling/base', command: ['cat'] });
    await invoke(costServer, 'idle-command');
    // Wait for the launcher pool to refill (it is refilled after a launcher is taken), then read the launchers.
    let launchers: string[] = [];
    for (let i = 0; i < 100 && launchers.length === 0; i++) {
      launchers = cgroupsRunning(costServer, MARKERS.launcher);
      if (launchers.length === 0) await sleep(100);
    }
    const commandHeld = ownerCgroups(costServer.ownerId).filter((name) => !cgroupPids(costServer.ownerId, name).some((pid) => MARKERS.launcher(cmdline(pid)) || MARKERS.python(cmdline(pid)) || MARKERS.node(cmdline(pid)))).length;
    costs.launcher = await idleCost(costServer, launchers, idleMs);
    data['density.idle'] = { idleMs, costs, commandFunctionSandboxesHeld: commandHeld };

    const targets: Record<string, string> = { python: 'PSS < 5 MiB', node: 'PSS < 15 MiB', launcher: '—' };
    const limitsKiB: Record<string, number> = { python: 5 * 1024, node: 15 * 1024 };
    for (const kind of ['python', 'node', 'launcher'] as const) {
      const cost = costs[kind] as IdleCost;
      const base = bare[kind];
      const limit = limitsKiB[kind];
      rows.push({
        group: 'density',
        id: `density.idle_${kind}`,
        scenario: kind === 'launcher' ? 'Idle prewarmed launcher (what a command function / one-off takes next): PSS / USS' : `Idle warm ${kind} handler sandbox: PSS / USS (all its processes)`,
        kindling: `${MiB(cost.pssKiB)} / ${MiB(cost.ussKiB)}; cgroup ${MiB(cost.chargedKiB)}; CPU ${cost.cpuMsPerMin.toFixed(1)} ms/min`,
        baseline: `${MiB(base.pssKiB)} / ${MiB(base.ussKiB)} (bare bwrap ${kind === 'launcher' ? 'sh -c sleep' : kind === 'python' ? 'python3 sleep' : 'node setTimeout'})`,
        ratio: fmtRatio(cost.pssKiB / base.pssKiB),
        target: targets[kind] as string,
        status: limit === undefined ? 'info' : cost.pssKiB < limit ? 'pass' : 'fail',
        note: `${cost.pids} processes; idle window ${idleMs} ms${kind === 'launcher' ? `; a command function keeps ${commandHeld} sandboxes between invocations (a fresh one each time)` : ''}`,
      });
    }
  } finally {
    await costServer.stop();
  }

  // Part 2: N python handlers, then N/2 node handlers (the targets: 2,000 and 1,000), each on a fresh server with its
  // default limits.
  const n = ctx.scale.densityN;
  try {
    for (const [runtime, count] of [
      ['python', n],
      ['node', Math.max(1, Math.round(n / 2))],
    ] as const) {
      const tenantKeys = async (server: BenchServer, tenants: number): Promise<string[]> => {
        const keys: string[] = [];
        let admin: string | undefined;
        for (let t = 0; t < tenants; t++) {
          const out = await timedRequest(agent, new URL(server.url), 'POST', '/v1/tenants', Buffer.from(JSON.stringify({ name: `dense-${t}` })), TIMEOUT_MS, { 'content-type': 'application/json', ...auth(admin) });
          if (out.status !== 201) throw new Error(`tenant dense-${t}: ${out.status} ${out.body.slice(0, 300)}`);
          const created = JSON.parse(out.body) as { apiKey: string; adminKey?: string };
          admin ??= created.adminKey;
          keys.push(created.apiKey);
        }
        return keys;
      };
      rows.push(...(await heldWarm(ctx, runtime, count, { tenantKeys, deploy: (server, name, key) => deploy(server, name, HANDLERS[runtime], key), invoke }, data)));
    }
  } finally {
    agent.destroy();
  }
  return { rows, data };
}

const FUNCTIONS_PER_TENANT = 500;
const HELD_TARGETS = { python: { held: 2000, pssMiB: 5 }, node: { held: 1000, pssMiB: 15 } } as const;

/**
 * `count` distinct handlers of `runtime` on a fresh server with its default limits, each warmed in turn, then each
 * invoked again: how many answered warm, what one idle sandbox costs with all of them alive (PSS splits the shared
 * pages of the interpreter among them), the server's RSS per warmed function, and the machine's counts at the end.
 */
async function heldWarm(
  ctx: BenchContext,
  runtime: 'python' | 'node',
  count: number,
  calls: {
    tenantKeys(server: BenchServer, tenants: number): Promise<string[]>;
    deploy(server: BenchServer, name: string, key: string): Promise<void>;
    invoke(server: BenchServer, name: string, key: string): Promise<Outcome>;
  },
  data: Record<string, unknown>,
): Promise<Row[]> {
  const rows: Row[] = [];
  const target = HELD_TARGETS[runtime];
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox' });
  try {
    // The server derives its warm caps from the machine (the same facts as this process's: memory, open-file limit).
    const capacity = warmCapacityDefaults(machineFacts());
    const limits = { maxWarmSandboxes: capacity.maxWarmSandboxes, maxWarmMemoryMb: capacity.maxWarmMemoryMb, idleTtlMs: DEFAULT_FUNCTION_POOLS.idleTtlMs };
    await sleep(500);
    const rssStartKiB = statusKiB(server.pid, 'VmRSS');
    const startCounts = machineCounts(server.pid, server.ownerId);
    const chargedSum = (): number => ownerCgroups(server.ownerId).reduce((sum, name) => sum + (cgroupMemoryBytes(server.ownerId, name) ?? 0), 0) / 1024;
    const curve: Array<{ warmed: number; serverRssMiB: number; cgroupMiB: number; memAvailableDropMiB: number }> = [];
    const checkpoint = Math.max(1, Math.round(count / 10));
    // Spread over tenants of FUNCTIONS_PER_TENANT functions each: one tenant keeps at most maxFunctionVersions (1,000
    // by default) versions, and a machine that holds thousands of warm functions serves many tenants.
    const keys = await calls.tenantKeys(server, Math.ceil(count / FUNCTIONS_PER_TENANT));
    const keyOf = (i: number): string => keys[Math.floor(i / FUNCTIONS_PER_TENANT)] as string;
    ctx.log(`density: deploying and warming ${count} ${runtime} handlers of ${keys.length} tenants (limits: ${JSON.stringify(limits)})`);
    let warmedCold = 0;
    const started = Date.now();
    for (let i = 0; i < count; i++) {
      await calls.deploy(server, `dense-${i}`, keyOf(i));
      const out = await calls.invoke(server, `dense-${i}`, keyOf(i));
      if (out.headers['x-kindling-cold-start'] === 'true') warmedCold++;
      if ((i + 1) % checkpoint === 0 || i === count - 1) {
        const counts = machineCounts(server.pid, server.ownerId);
        curve.push({ warmed: i + 1, serverRssMiB: statusKiB(server.pid, 'VmRSS') / 1024, cgroupMiB: chargedSum() / 1024, memAvailableDropMiB: startCounts.memAvailableMiB - counts.memAvailableMiB });
        ctx.log(`density: ${runtime} ${i + 1}/${count} warmed (${Math.round((Date.now() - started) / 1000)} s), MemAvailable ${counts.memAvailableMiB} MiB`);
      }
    }
    const rssAfterKiB = statusKiB(server.pid, 'VmRSS');
    const heldBefore = cgroupsRunning(server, MARKERS[runtime]).length;
    ctx.log(`density: ${heldBefore} ${runtime} sandboxes alive after warming; invoking each function again`);
    const round: Outcome[] = [];
    for (let i = 0; i < count; i++) round.push(await calls.invoke(server, `dense-${i}`, keyOf(i)));
    const warm = round.filter((out) => out.headers['x-kindling-cold-start'] === 'false').length;
    const warmMs = round.filter((out) => out.headers['x-kindling-cold-start'] === 'false').map((out) => out.ms).sort((a, b) => a - b);
    const allMs = round.map((out) => out.ms).sort((a, b) => a - b);
    const endCounts = machineCounts(server.pid, server.ownerId);
    // PSS shares pages among the sandboxes that map them (the interpreter, its libraries): with many alive, each one's
    // share is what the machine pays per extra sandbox; with one alone it equals USS.
    const alive = cgroupsRunning(server, MARKERS[runtime]);
    const aliveMemory = alive.map((name) => cgroupProcMemory(server.ownerId, name));
    const meanPssKiB = aliveMemory.reduce((sum, m) => sum + m.pssKiB, 0) / Math.max(1, alive.length);
    const meanUssKiB = aliveMemory.reduce((sum, m) => sum + m.ussKiB, 0) / Math.max(1, alive.length);
    const perSandboxKiB = (rssAfterKiB - rssStartKiB) / count;
    const key = runtime === 'python' ? 'density.held' : `density.held_${runtime}`;
    data[key] = { runtime, n: count, limits, warmedCold, heldAfterWarming: heldBefore, warmInSecondRound: warm, roundMs: round.map((out) => out.ms), curve, aliveAtEnd: alive.length, meanPssKiB, meanUssKiB, startCounts, endCounts, rssStartKiB, rssAfterKiB };
    rows.push({
      group: 'density',
      id: `density.held_${runtime}`,
      scenario: `Idle warm ${runtime} handlers held: ${count} functions of ${keys.length} tenant${keys.length > 1 ? 's' : ''} warmed in turn, then each invoked again`,
      kindling: `${warm}/${count} warm (p99 of the warm ones ${fmtMs(quantile(warmMs, 0.99))}; all ${fmtMs(quantile(allMs, 0.99))})`,
      baseline: '—',
      ratio: '—',
      target: `≥ ${target.held} held warm with the defaults`,
      status: warm >= target.held ? 'pass' : count < target.held && warm === count ? 'info' : 'fail',
      note: `bounded by --max-warm-sandboxes ${limits.maxWarmSandboxes} and --max-warm-memory-mb ${limits.maxWarmMemoryMb} (defaults); ${heldBefore} ${runtime} sandboxes alive after warming; at the end: ${endCounts.pids} pids on the machine, ${endCounts.fileHandles} open files, server ${endCounts.serverFds} fds, ${endCounts.cgroups} cgroups of the server, MemAvailable ${endCounts.memAvailableMiB} MiB (${startCounts.memAvailableMiB - endCounts.memAvailableMiB} MiB less than before)`,
    });
    rows.push({
      group: 'density',
      id: `density.pss_${runtime}_many`,
      scenario: `Idle warm ${runtime} handler sandbox, PSS / USS with ${alive.length} alive (shared pages split among them)`,
      kindling: `${MiB(meanPssKiB)} / ${MiB(meanUssKiB)} per sandbox`,
      baseline: '—',
      ratio: '—',
      target: `PSS < ${target.pssMiB} MiB`,
      status: alive.length === 0 ? 'error' : meanPssKiB < target.pssMiB * 1024 ? 'pass' : 'fail',
      note: `mean over every ${runtime} handler sandbox alive at the end (the generic code-less ${runtime} sandbox included)`,
    });
    rows.push({
      group: 'density',
      id: runtime === 'python' ? 'density.server_rss_per_sandbox' : `density.server_rss_per_sandbox_${runtime}`,
      scenario: `Server RSS growth per warmed ${runtime} function (${count} deployed and warmed)`,
      kindling: `${perSandboxKiB.toFixed(0)} KiB (${MiB(rssStartKiB)} → ${MiB(rssAfterKiB)})`,
      baseline: '—',
      ratio: '—',
      target: '—',
      status: 'info',
      note: `includes the function records and caches of ${count} functions; warm sandboxes alive at the end: ${heldBefore}`,
    });
    const svg = lineChart({
      title: `Memory vs functions warmed (${count} ${runtime} handlers, default limits)`,
      xLabel: 'functions warmed in turn',
      yLabel: 'MiB',
      series: [
        { name: 'sandbox cgroups (sum)', points: curve.map((c) => [c.warmed, c.cgroupMiB] as const) },
        { name: 'server RSS', points: curve.map((c) => [c.warmed, c.serverRssMiB] as const) },
        { name: 'MemAvailable drop', points: curve.map((c) => [c.warmed, c.memAvailableDropMiB] as const) },
      ],
    });
    const file = runtime === 'python' ? `${ctx.stamp}-density.svg` : `${ctx.stamp}-density-${runtime}.svg`;
    await writeFile(join(ctx.resultsDir, file), svg);
    data[runtime === 'python' ? 'density.svg' : `density.svg_${runtime}`] = file;
  } finally {
    await server.stop();
  }
  return rows;
}
