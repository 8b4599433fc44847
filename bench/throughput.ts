/**
 * Throughput curve (issue 19): a warm node handler invoked by 1, 8, 32, 128 and 512 closed-loop clients, a fixed
 * time per step, invocations per second and p50/p99 per step; against a bare node:http server answering the same
 * body at the same concurrency (the HTTP ceiling) and a bare fastify route (fastify's own cost), all in this run.
 * Plus 100 x `sleep 1` executions in parallel (wall time) against 100 x plain `bwrap ... sleep 1` at once.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { bwrapArgs, rootfsOf, startBareServer, timedRequest } from './lib/bare.js';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { runCurveStep, type CurveStep } from './lib/load-curve.js';
import { launchServer } from './lib/server.js';
import { fmtMs, fmtRatio, quantile } from './lib/stats.js';
import { lineChart } from './lib/svg.js';
import type { Row } from './lib/table.js';

const STEPS = [1, 8, 32, 128, 512];

interface StepSummary {
  connections: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  ok: number;
  errors: number;
}

const summary = (step: CurveStep): StepSummary => {
  const sorted = [...step.samples].sort((a, b) => a - b);
  return { connections: step.connections, perSecond: step.perSecond, p50Ms: quantile(sorted, 0.5), p99Ms: quantile(sorted, 0.99), ok: step.ok, errors: step.errors };
};

export async function runThroughputGroup(ctx: BenchContext): Promise<GroupResult> {
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const stepMs = ctx.scale.stepMs;
  const body = Buffer.from('ping');
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox' });
  const nodeHttp = await startBareServer('node-http', ctx.repoRoot);
  const fastify = await startBareServer('fastify', ctx.repoRoot);
  try {
    const agent = new Agent({ keepAlive: true, maxSockets: 4 });
    const base = new URL(server.url);
    // maxConcurrency 2: one warm sandbox per core; maxQueued above the largest step so that queueing, not 429, absorbs it.
    const spec = { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 2, maxConcurrency: 2, maxQueued: 1000 };
    const deployed = await timedRequest(agent, base, 'PUT', '/v1/functions/tput', Buffer.from(JSON.stringify(spec)), 60_000, { 'content-type': 'application/json' });
    if (deployed.status >= 300) throw new Error(`deploy: ${deployed.status} ${deployed.body.slice(0, 300)}`);
    for (let i = 0; i < 50; i++) {
      const out = await timedRequest(agent, base, 'POST', '/v1/functions/tput/invoke', body, 60_000, { 'content-type': 'application/octet-stream' });
      if (out.status !== 200 || out.body !== 'ping') throw new Error(`warm-up invoke: ${out.status} ${out.body.slice(0, 300)}`);
    }
    agent.destroy();

    const targets = [
      { name: 'kindling', url: base, path: '/v1/functions/tput/invoke' },
      { name: 'node:http', url: new URL(nodeHttp.url), path: '/' },
      { name: 'fastify', url: new URL(fastify.url), path: '/' },
    ];
    const curves: Record<string, StepSummary[]> = {};
    for (const connections of STEPS) {
      // Interleaved per step, so that a noisy neighbour's burst hits all three alike.
      for (const target of targets) {
        ctx.log(`throughput: ${target.name}, ${connections} clients, ${stepMs} ms`);
        const step = await runCurveStep({ url: target.url, method: 'POST', path: target.path, headers: { 'content-type': 'application/octet-stream' }, body, connections, durationMs: stepMs, status: 200 });
        (curves[target.name] ??= []).push(summary(step));
      }
    }
    data['throughput.curve'] = { stepMs, curves };
    for (const [i, connections] of STEPS.entries()) {
      const k = curves.kindling?.[i] as StepSummary;
      const h = curves['node:http']?.[i] as StepSummary;
      const f = curves.fastify?.[i] as StepSummary;
      const target32 = connections === 32;
      rows.push({
        group: 'throughput',
        id: `throughput.warm_node_${connections}`,
        scenario: `Warm node handler, ${connections} concurrent client${connections > 1 ? 's' : ''} (${stepMs / 1000} s)`,
        kindling: `${Math.round(k.perSecond)}/s (p50 ${fmtMs(k.p50Ms)}, p99 ${fmtMs(k.p99Ms)})`,
        baseline: `node:http ${Math.round(h.perSecond)}/s (p99 ${fmtMs(h.p99Ms)}); fastify ${Math.round(f.perSecond)}/s (p99 ${fmtMs(f.p99Ms)})`,
        ratio: fmtRatio(k.perSecond / h.perSecond),
        target: target32 ? '≥ 5000/s, p99 < 25 ms' : '—',
        status: target32 ? (k.perSecond >= 5000 && k.p99Ms < 25 && k.errors === 0 ? 'pass' : 'fail') : 'info',
        note: `errors ${k.errors}; maxConcurrency 2 (2 cores); fastify's own cost at this step: ${fmtRatio(f.perSecond / h.perSecond)} of node:http`,
      });
    }
    const svg = lineChart({
      title: 'Warm node handler: latency vs concurrent clients',
      xLabel: 'concurrent clients (log scale)',
      yLabel: 'latency, ms',
      logX: true,
      series: [
        { name: 'kindling p50', points: (curves.kindling ?? []).map((s) => [s.connections, s.p50Ms] as const) },
        { name: 'kindling p99', points: (curves.kindling ?? []).map((s) => [s.connections, s.p99Ms] as const) },
        { name: 'node:http p99', points: (curves['node:http'] ?? []).map((s) => [s.connections, s.p99Ms] as const) },
        { name: 'fastify p99', points: (curves.fastify ?? []).map((s) => [s.connections, s.p99Ms] as const) },
      ],
    });
    await writeFile(join(ctx.resultsDir, `${ctx.stamp}-throughput-latency.svg`), svg);
    const rate = lineChart({
      title: 'Requests per second vs concurrent clients',
      xLabel: 'concurrent clients (log scale)',
      yLabel: 'answers/s',
      logX: true,
      series: Object.entries(curves).map(([name, steps]) => ({ name, points: steps.map((s) => [s.connections, s.perSecond] as const) })),
    });
    await writeFile(join(ctx.resultsDir, `${ctx.stamp}-throughput-rate.svg`), rate);
    data['throughput.svg'] = [`${ctx.stamp}-throughput-latency.svg`, `${ctx.stamp}-throughput-rate.svg`];

    // 100 x sleep 1 at once, with the server's default limits, against plain bwrap.
    const sleeps = 100;
    ctx.log(`throughput: ${sleeps} x sleep 1 in parallel`);
    const sleepAgent = new Agent({ keepAlive: false, maxSockets: Infinity });
    const sleepSpec = Buffer.from(JSON.stringify({ image: 'kindling/base', command: ['sleep', '1'] }));
    const started = performance.now();
    const outs = await Promise.all(Array.from({ length: sleeps }, () => timedRequest(sleepAgent, base, 'POST', '/v1/execute', sleepSpec, 120_000, { 'content-type': 'application/json' })));
    const wallMs = performance.now() - started;
    sleepAgent.destroy();
    const ok = outs.filter((out) => out.status === 200 && (JSON.parse(out.body) as { exitCode?: number }).exitCode === 0).length;
    const bareStarted = performance.now();
    await Promise.all(
      Array.from({ length: sleeps }, () => new Promise((resolve) => spawn('bwrap', bwrapArgs(rootfsOf('base'), ['sleep', '1']), { env: CLEAN_ENV, stdio: 'ignore' }).once('exit', resolve).once('error', resolve))),
    );
    const bareMs = performance.now() - bareStarted;
    data['throughput.sleep_parallel'] = { sleeps, wallMs, ok, statuses: outs.map((out) => out.status), bareMs };
    rows.push({
      group: 'throughput',
      id: 'throughput.sleep_parallel',
      scenario: `${sleeps} x \`sleep 1\` executions in parallel (default limits)`,
      kindling: `${fmtMs(wallMs)} (${ok}/${sleeps} ok)`,
      baseline: `${fmtMs(bareMs)} (${sleeps} x bwrap sleep 1 at once)`,
      ratio: fmtRatio(wallMs / bareMs),
      target: '< 1.5 s',
      status: ok === sleeps && wallMs < 1500 ? 'pass' : 'fail',
      note: `statuses: ${[...new Set(outs.map((out) => out.status))].map((status) => `${status} x${outs.filter((out) => out.status === status).length}`).join(', ')}; --max-concurrent bounds how many run at once`,
    });
  } finally {
    await fastify.stop();
    await nodeHttp.stop();
    await server.stop();
  }
  return { rows, data };
}
