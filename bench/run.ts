/**
 * `npm run bench [-- --only docker|sandbox|sandboxes|sandbox-files|functions|async|microvm|python|gvisor|bundles|operator|density|burst|throughput|cluster] [--runs N]
 *   [--density-n N] [--idle-ms MS] [--burst 100,1000] [--burst-functions N] [--step-ms MS]`: Kindling against raw baselines measured in the same run.
 * Prints markdown tables to stdout (progress goes to stderr) and writes every sample to bench/results/ (the density,
 * burst and throughput groups also write SVG charts there).
 * Exits 0 when targets fail (the table says FAIL); non-zero only when the bench itself breaks.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runAsyncGroup } from './async.js';
import { runDockerGroup } from './docker.js';
import { BENCH_LABEL, type BenchContext, type BenchScale, type GroupResult } from './lib/context.js';
import { machineInfo, machineMarkdown } from './lib/machine.js';
import { dockerCli } from './lib/proc.js';
import { onCleanup, runCleanups } from './lib/server.js';
import { rowsTable, type Row } from './lib/table.js';
import { runFunctionsGroup } from './functions.js';
import { runMicroVmGroup } from './microvm.js';
import { runPythonGroup } from './python.js';
import { runSandboxGroup } from './sandbox.js';
import { runPersistentGroup } from './persistent.js';
import { runSandboxFilesGroup } from './sandbox-files.js';
import { runDockerSandboxRows } from './persistent-docker.js';
import { runGvisorGroup } from './gvisor.js';
import { runBundlesGroup } from './bundles.js';
import { runOperatorGroup } from './operator.js';
import { runDensityGroup } from './density.js';
import { runBurstGroup } from './burst.js';
import { runThroughputGroup } from './throughput.js';
import { runClusterGroup } from './cluster.js';
import { parseScale, SCALE_USAGE } from './lib/scale.js';

const DEFAULT_RUNS = { docker: 20, sandbox: 50, sandboxes: 30, 'sandbox-files': 7, functions: 2000, async: 100, microvm: 5, python: 500, gvisor: 10, bundles: 15, operator: 10, density: 200, burst: 1, throughput: 1, cluster: 1 };
const GROUPS = ['docker', 'sandbox', 'sandboxes', 'sandbox-files', 'functions', 'async', 'microvm', 'python', 'gvisor', 'bundles', 'operator', 'density', 'burst', 'throughput', 'cluster'] as const;
type Group = (typeof GROUPS)[number];

interface Options {
  only: Group[];
  runs: number | null;
  scale: BenchScale;
}

/** One group's rows measured by two runners (the sandboxes group: the sandbox executor's rows, then docker's). */
function joinGroups(first: GroupResult, second: GroupResult): GroupResult {
  return { rows: [...first.rows, ...second.rows], data: { ...first.data, docker: second.data } };
}

function usage(): string {
  return `usage: npm run bench -- [--only docker|sandbox|sandboxes|sandbox-files|functions|async|microvm|python|gvisor|bundles|operator|density|burst|throughput|cluster] [--runs N] ${SCALE_USAGE}`;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      only: { type: 'string', multiple: true },
      runs: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      'density-n': { type: 'string' },
      'idle-ms': { type: 'string' },
      burst: { type: 'string' },
      'burst-functions': { type: 'string' },
      'step-ms': { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const only = (values.only ?? []).flatMap((value) => value.split(',')).map((value) => value.trim()).filter(Boolean);
  for (const group of only) {
    if (!(GROUPS as readonly string[]).includes(group)) throw new Error(`--only must be one of ${GROUPS.join(', ')}, got "${group}"\n${usage()}`);
  }
  let runs: number | null = null;
  if (values.runs !== undefined) {
    runs = Number(values.runs);
    if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number >= 1, got "${values.runs}"\n${usage()}`);
  }
  const scale = parseScale(values, runs, usage());
  return { only: only.length > 0 ? (only as Group[]) : [...GROUPS], runs, scale };
}

/** Removes the bench's own baseline containers (labelled) that an interrupted `docker run --rm` left behind. */
async function sweepBenchContainers(): Promise<void> {
  const ids = (await dockerCli(['ps', '-aq', '--filter', `label=${BENCH_LABEL}`]).catch(() => ''))
    .split('\n')
    .map((id) => id.trim())
    .filter(Boolean);
  if (ids.length > 0) await dockerCli(['rm', '-f', ...ids]).catch(() => '');
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
  const startedAt = new Date();
  const log = (message: string): void => {
    process.stderr.write(`[bench ${((Date.now() - startedAt.getTime()) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
  };
  const workDir = await mkdtemp(join(tmpdir(), 'kindling-bench-work-'));
  const resultsDir = join(repoRoot, 'bench', 'results');
  await mkdir(resultsDir, { recursive: true });
  const stamp = startedAt.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  onCleanup(() => rm(workDir, { recursive: true, force: true }));
  onCleanup(sweepBenchContainers);

  const ctx: BenchContext = {
    repoRoot,
    runs: {
      docker: options.runs ?? DEFAULT_RUNS.docker,
      sandbox: options.runs ?? DEFAULT_RUNS.sandbox,
      functions: options.runs ?? DEFAULT_RUNS.functions,
      microvm: options.runs ?? DEFAULT_RUNS.microvm,
    },
    runsOverridden: options.runs !== null,
    workDir,
    log,
    resultsDir,
    stamp,
    scale: options.scale,
  };
  const below = options.only.filter((group) => options.runs !== null && options.runs < DEFAULT_RUNS[group]);
  if (below.length > 0) {
    log(`--runs ${options.runs}: below the spec's minimum for ${below.map((group) => `${group} (>= ${DEFAULT_RUNS[group]})`).join(', ')}; figures are indicative only`);
  }
  const machine = await machineInfo(repoRoot);
  log(`machine: ${machine.cpuModel}, ${machine.cores} cores, Linux ${machine.kernel}, docker ${machine.dockerVersion}`);

  const groups: Partial<Record<Group, GroupResult>> = {};
  let broken: string | null = null;
  for (const group of options.only) {
    try {
      groups[group] =
        group === 'docker'
          ? await runDockerGroup(ctx)
          : group === 'sandbox'
            ? await runSandboxGroup(ctx)
            : group === 'sandboxes'
              ? joinGroups(await runPersistentGroup(ctx), await runDockerSandboxRows(ctx))
            : group === 'sandbox-files'
              ? await runSandboxFilesGroup(ctx)
            : group === 'microvm'
              ? await runMicroVmGroup(ctx)
              : group === 'async'
                ? await runAsyncGroup(ctx)
                : group === 'python'
                  ? await runPythonGroup(ctx)
                : group === 'gvisor'
                  ? await runGvisorGroup(ctx)
                : group === 'bundles'
                  ? await runBundlesGroup(ctx)
                : group === 'operator'
                  ? await runOperatorGroup(ctx)
                : group === 'density'
                  ? await runDensityGroup(ctx)
                : group === 'burst'
                  ? await runBurstGroup(ctx)
                : group === 'throughput'
                  ? await runThroughputGroup(ctx)
                : group === 'cluster'
                  ? await runClusterGroup(ctx)
                : await runFunctionsGroup(ctx);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      log(`${group} group broke: ${message}`);
      broken = message;
      groups[group] = {
        rows: [{ group, id: `${group}.group`, scenario: `${group} group`, kindling: `error: ${message.slice(0, 200)}`, baseline: '—', ratio: '—', target: '—', status: 'error' }],
        data: { error: message },
      };
    }
  }
  const finishedAt = new Date();
  const rows: Row[] = GROUPS.flatMap((group) => groups[group]?.rows ?? []);

  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  const report: string[] = [
    `## Kindling bench, ${machine.date.slice(0, 10)}`,
    '',
    machineMarkdown(machine),
    `- Command: \`${command}\`; client: node:http with keep-alive (no SDK), times are client-side wall times`,
    '',
  ];
  for (const group of GROUPS) {
    const result = groups[group];
    if (!result) continue;
    const titles: Record<Group, string> = {
      docker: 'Docker executor (issue 2)',
      sandbox: 'Native sandbox executor (issue 3)',
      sandboxes: 'Persistent sandboxes, sandbox executor (issue 16)',
      'sandbox-files': 'Persistent sandboxes: directory tar transfers and hibernation, sandbox executor (issue 16)',
      functions: 'Deployed functions, warm pools (issue 4)',
      async: 'Payloads and async invocations (issue 5)',
      microvm: 'MicroVM executor (issue 8)',
      gvisor: 'gvisor executor: one-offs, hibernate/restore, pause/resume (issue 16)',
      python: 'Python SDK (issue 20)',
      bundles: 'Function bundles, sandbox executor (issue 21)',
      operator: 'Operator mode: jobs from an EVM chain, results back (issue 17)',
      density: 'Density: idle warm sandbox cost, warm sandboxes held (issue 19)',
      burst: 'Bursts: simultaneous one-off executions and cold invocations (issue 19)',
      throughput: 'Throughput curve: warm invocations per second vs concurrent clients (issue 19)',
      cluster: 'Cluster foundation: async enqueue on JetStream (issue 18)',
    };
    const title = titles[group];
    report.push(`### ${title}`, '', rowsTable(result.rows), '');
  }
  const counts = rows.reduce<Record<string, number>>((acc, row) => ({ ...acc, [row.status]: (acc[row.status] ?? 0) + 1 }), {});
  report.push(`Summary: ${Object.entries(counts).map(([status, count]) => `${count} ${status}`).join(', ')}; took ${((finishedAt.getTime() - startedAt.getTime()) / 1000).toFixed(0)} s.`);
  process.stdout.write(`${report.join('\n')}\n`);

  const json = JSON.stringify(
    {
      schema: 1,
      command,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      options: { only: options.only, runs: ctx.runs, runsOverridden: ctx.runsOverridden },
      machine,
      rows,
      scenarios: Object.fromEntries(Object.entries(groups).flatMap(([, result]) => Object.entries(result?.data ?? {}))),
      markdown: report.join('\n'),
    },
    null,
    2,
  );
  const file = join(resultsDir, `${stamp}-${machine.gitSha}.json`);
  await writeFile(file, `${json}\n`);
  await writeFile(join(resultsDir, 'latest.json'), `${json}\n`);
  log(`wrote ${file} and ${join(resultsDir, 'latest.json')}`);

  const errors = rows.filter((row) => row.status === 'error');
  if (broken !== null || errors.length > 0) {
    log(`the bench itself failed in ${errors.length} row(s): see the table`);
    return 1;
  }
  return 0;
}

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`bench: ${signal}: stopping servers and removing containers\n`);
    void runCleanups().finally(() => process.exit(130));
  });
}

main()
  .then(
    async (code) => {
      await runCleanups();
      process.exitCode = code;
    },
    async (error: unknown) => {
      process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      await runCleanups();
      process.exitCode = 2;
    },
  );
