/**
 * The gvisor executor (issue 16), measured at the executor (real runsc, no server): a one-off `echo` from start to
 * exit next to plain `runsc do echo` in the same run; hibernate and restore of a persistent sandbox holding a running
 * process, a memory snapshot of it and a sandbox made from that snapshot, next to a cold create of the same sandbox
 * (create -> first command output); pause and resume. Runs
 * alternate Kindling and baseline so that the machine's load falls on both alike.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { newExecutionId } from '../src/core/ids.js';
import type { RunSpec } from '../src/core/types.js';
import type { PersistentSandbox } from '../src/executors/executor.js';
import { GvisorExecutor } from '../src/executors/gvisor/index.js';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { timedSpawnOk } from './lib/proc.js';
import { fmtMs, fmtRatio, quantile } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const RUNSC = '/usr/bin/runsc';
const IMAGES_DIR = '/var/lib/kindling/images';

const ROWS = [
  { id: 'gvisor.echo', scenario: 'One-off `echo hi` on gvisor: start -> exit (runsc run of an OCI bundle, cgroup made beforehand)', target: 'measured; baseline `runsc do echo hi`' },
  { id: 'gvisor.create_first_output', scenario: 'Cold create of a persistent gvisor sandbox -> first command output (`echo hi`)', target: 'measured (the baseline of the restore rows)' },
  { id: 'gvisor.hibernate', scenario: 'Hibernate a gvisor sandbox holding a running process (runsc checkpoint, sandbox ended)', target: 'measured (issue 16)' },
  { id: 'gvisor.restore_first_output', scenario: 'Restore a hibernated gvisor sandbox -> first command output, the process alive', target: 'restore < cold start (issue 16)' },
  { id: 'gvisor.memory_snapshot', scenario: 'Memory snapshot of a gvisor sandbox holding a running process (checkpoint, files copied, source restored)', target: 'measured (issue 16: snapshot < 100 ms is for files)' },
  { id: 'gvisor.fork_first_output', scenario: 'Sandbox from that memory snapshot -> first command output, the process running on in it', target: 'fork < cold start' },
  { id: 'gvisor.pause', scenario: 'Pause a gvisor sandbox (runsc pause)', target: 'measured; issue 16 p50 < 5 ms is for the sandbox executor' },
  { id: 'gvisor.resume', scenario: 'Resume a gvisor sandbox (runsc resume)', target: 'measured' },
] as const;

const p50 = (samples: number[]): number => quantile([...samples].sort((a, b) => a - b), 0.5);
const stat = (samples: number[]): string => {
  const sorted = [...samples].sort((a, b) => a - b);
  return `p50 ${fmtMs(quantile(sorted, 0.5))}, p99 ${fmtMs(quantile(sorted, 0.99))} (n=${samples.length})`;
};

function spec(command: string[]): RunSpec {
  return {
    id: newExecutionId(),
    image: 'kindling/base',
    command,
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8' },
    workdir: '/work',
    network: 'none',
    stdin: false,
    files: [],
    labels: {},
    limits: { timeoutMs: 600_000, memoryMb: 256, cpus: 1, pids: 128, outputBytes: 1 << 20, diskMb: 64, openFiles: 1024 },
  };
}

/** Runs `command` in the sandbox to its end; its stdout. */
async function run(sandbox: PersistentSandbox, command: string[]): Promise<string> {
  const running = await sandbox.exec({ command, env: {}, workdir: '/work', stdin: false });
  const chunks: Buffer[] = [];
  running.stdout.on('data', (chunk: Buffer) => chunks.push(chunk));
  running.stderr.resume();
  const exit = await running.wait();
  if (exit.exitCode !== 0) throw new Error(`${command.join(' ')} exited ${exit.exitCode}`);
  return Buffer.concat(chunks).toString();
}

export async function runGvisorGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runsOverridden ? Math.max(1, ctx.runs.microvm) : 10;
  const skipAll = (reason: string): GroupResult => ({ rows: ROWS.map((r) => skippedRow('gvisor', r.id, r.scenario, r.target, reason)), data: { skipped: reason } });
  if (!existsSync(RUNSC)) return skipAll(`runsc is not installed at ${RUNSC} (apt-get install runsc)`);
  if (process.getuid?.() !== 0) return skipAll('the gvisor executor needs root');
  const stateDir = await mkdtemp(join(ctx.workDir, 'gvisor-'));
  const executor = new GvisorExecutor({ imagesDir: IMAGES_DIR, stateDir, ownerId: `bench-gvisor-${process.pid}`, instanceId: 'bench' });
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  try {
    const status = await executor.probe();
    if (!status.ready) return skipAll(`gvisor not ready: ${status.reason}`);

    // -- one-off echo vs runsc do ----------------------------------------------------------------------------------
    const baselineRoot = await mkdtemp(join(ctx.workDir, 'runsc-do-'));
    const echo: number[] = [];
    const runscDo: number[] = [];
    for (let i = 0; i < n; i++) {
      const started = performance.now();
      const execution = await executor.start(spec(['echo', 'hi']));
      execution.stdout.resume();
      execution.stderr.resume();
      const exit = await execution.wait();
      echo.push(performance.now() - started);
      if (exit.exitCode !== 0) throw new Error(`echo exited ${exit.exitCode}`);
      await execution.disposed;
      runscDo.push((await timedSpawnOk(RUNSC, [`--root=${baselineRoot}`, '--network=none', 'do', 'echo', 'hi'], { env: CLEAN_ENV })).ms);
    }
    await rm(baselineRoot, { recursive: true, force: true });
    rows.push(row(0, stat(echo), `runsc do: ${stat(runscDo)}`, p50(echo) / p50(runscDo)));
    data.echo = { kindlingMs: echo, runscDoMs: runscDo };

    // -- cold create, hibernate, restore, pause, resume --------------------------------------------------------------
    const cold: number[] = [];
    const hibernate: number[] = [];
    const restore: number[] = [];
    const pause: number[] = [];
    const resume: number[] = [];
    const imageBytes: number[] = [];
    const memorySnapshot: number[] = [];
    const fork: number[] = [];
    for (let i = 0; i < n; i++) {
      const sandboxSpec = spec([]);
      let started = performance.now();
      let sandbox = await executor.createPersistentSandbox(sandboxSpec, { storage: { fromSnapshot: null } });
      try {
        await run(sandbox, ['echo', 'hi']);
        cold.push(performance.now() - started);
        // A process holding state in memory: the counter of a shell loop (the file replaced whole, never seen half-written).
        await run(sandbox, ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /work/c.new && mv /work/c.new /work/c; sleep 0.1; done >/dev/null 2>&1 &']);
        started = performance.now();
        await sandbox.pause();
        pause.push(performance.now() - started);
        started = performance.now();
        await sandbox.resume();
        resume.push(performance.now() - started);
        const snapshotId = `bench-${sandboxSpec.id}`;
        started = performance.now();
        const snap = await sandbox.snapshot!(snapshotId);
        memorySnapshot.push(performance.now() - started);
        if (snap.memory !== true) throw new Error('the snapshot kept no memory');
        const forkSpec = spec([]);
        started = performance.now();
        const forked = await executor.createPersistentSandbox(forkSpec, { storage: { fromSnapshot: snapshotId } });
        try {
          const counted = Number(await run(forked, ['cat', '/work/c']));
          fork.push(performance.now() - started);
          if (!(counted > 0)) throw new Error('the fork has no counter');
        } finally {
          await forked.destroy();
          await executor.sandboxStorage.removeDisk(forkSpec.id);
          await executor.sandboxStorage.removeSnapshot(snapshotId);
        }
        const before = Number(await run(sandbox, ['cat', '/work/c']));
        started = performance.now();
        imageBytes.push((await sandbox.hibernate!()).bytes);
        hibernate.push(performance.now() - started);
        started = performance.now();
        sandbox = await executor.createPersistentSandbox(sandboxSpec, { storage: { fromSnapshot: null }, restore: 'hibernated' });
        const after = Number(await run(sandbox, ['cat', '/work/c']));
        restore.push(performance.now() - started);
        if (!(after >= before)) throw new Error(`the counter read ${after} after the restore, ${before} before`);
      } finally {
        await sandbox.destroy();
        await executor.sandboxStorage.removeDisk(sandboxSpec.id);
      }
    }
    const coldText = `cold create: ${stat(cold)}`;
    rows.push(row(1, stat(cold), '—', Number.NaN));
    rows.push(row(2, stat(hibernate), coldText, p50(hibernate) / p50(cold), `image p50 ${Math.round(p50(imageBytes) / 1024)} KiB`));
    rows.push(row(3, stat(restore), coldText, p50(restore) / p50(cold), p50(restore) < p50(cold) ? undefined : 'restore is not faster than a cold create here'));
    rows.push(row(4, stat(memorySnapshot), coldText, p50(memorySnapshot) / p50(cold)));
    rows.push(row(5, stat(fork), coldText, p50(fork) / p50(cold), p50(fork) < p50(cold) ? undefined : 'not faster than a cold create here'));
    rows.push(row(6, stat(pause), '—', Number.NaN));
    rows.push(row(7, stat(resume), '—', Number.NaN));
    Object.assign(data, { coldMs: cold, hibernateMs: hibernate, restoreMs: restore, memorySnapshotMs: memorySnapshot, forkMs: fork, pauseMs: pause, resumeMs: resume, imageBytes });
    return { rows, data };
  } finally {
    await executor.destroy();
    await executor.reap();
    await rm(stateDir, { recursive: true, force: true });
  }
}

function row(index: number, kindling: string, baseline: string, ratio: number, note?: string): Row {
  const def = ROWS[index]!;
  const compared = def.id === 'gvisor.restore_first_output' || def.id === 'gvisor.fork_first_output';
  const status = compared ? (/not faster/.test(note ?? '') ? 'fail' : 'pass') : 'info';
  return { group: 'gvisor', id: def.id, scenario: def.scenario, kindling, baseline, ratio: fmtRatio(ratio), target: def.target, status, ...(note === undefined ? {} : { note }) };
}
