/**
 * The Python SDK (sdk/python), measured by bench/python_sdk.py under Debian's python3 against a server of its own:
 * - warm invoke of a python handler: p50 through the SDK vs raw httpx (same server, same run, interleaved);
 * - 1 GiB streamed through `cat` with `execute_raw` from a generator to a counting sink: throughput and the peak
 *   RSS of the Python process (flat memory: it must not grow with the size), against curl streaming a 1 GiB file
 *   through the same route (`-T FILE`, so curl does not load it) in the same run.
 */
import { execFile } from 'node:child_process';
import { open, rm } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BenchContext, GroupResult } from './lib/context.js';
import { launchServer } from './lib/server.js';
import type { Row } from './lib/table.js';

const execFileAsync = promisify(execFile);
const GiB = 1024 * 1024 * 1024;
/** Peak RSS of the Python process streaming 1 GiB; above this, memory grew with the stream. */
const MAX_PEAK_RSS_MIB = 100;

interface PythonFigures {
  runs: number;
  sdkP50Ms: number;
  rawP50Ms: number;
  streamMiBps: number;
  peakRssMiB: number;
}

export async function runPythonGroup(ctx: BenchContext): Promise<GroupResult> {
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox' });
  try {
    const runs = Math.min(ctx.runs.functions, ctx.runsOverridden ? ctx.runs.functions : 500);
    ctx.log(`python: ${runs} warm invokes (SDK and raw httpx), then 1 GiB through cat`);
    const { stdout } = await execFileAsync('/usr/bin/python3', [join(ctx.repoRoot, 'bench', 'python_sdk.py'), server.url, String(runs), String(GiB)], {
      env: { PATH: '/usr/bin:/bin', PYTHONPATH: join(ctx.repoRoot, 'sdk', 'python') },
      maxBuffer: 64 * 1024 * 1024,
      timeout: 15 * 60_000,
    });
    const figures = JSON.parse(stdout) as PythonFigures;
    const curlMiBps = await curlThroughCat(ctx, server.url);
    const overhead = figures.sdkP50Ms - figures.rawP50Ms;
    const rows: Row[] = [
      {
        group: 'python',
        id: 'python.invoke-warm',
        scenario: `warm invoke, python handler (p50 of ${figures.runs})`,
        kindling: `${figures.sdkP50Ms.toFixed(2)} ms (SDK)`,
        baseline: `${figures.rawP50Ms.toFixed(2)} ms (raw httpx)`,
        ratio: `${(figures.sdkP50Ms / figures.rawP50Ms).toFixed(2)}x`,
        target: 'info (overhead = SDK - raw)',
        status: 'info',
        note: `overhead ${overhead.toFixed(2)} ms`,
      },
      {
        group: 'python',
        id: 'python.stream-1gib',
        scenario: '1 GiB through cat, execute_raw (generator in, sink out)',
        kindling: `${figures.streamMiBps.toFixed(0)} MiB/s`,
        baseline: `${curlMiBps.toFixed(0)} MiB/s (curl -T, same route)`,
        ratio: `${((figures.streamMiBps / curlMiBps) * 100).toFixed(0)}%`,
        target: `peak RSS < ${MAX_PEAK_RSS_MIB} MiB`,
        status: figures.peakRssMiB < MAX_PEAK_RSS_MIB ? 'pass' : 'fail',
        note: `peak RSS of the Python process ${figures.peakRssMiB.toFixed(0)} MiB`,
      },
    ];
    return { rows, data: { ...figures, curlMiBps } };
  } finally {
    await server.stop();
  }
}

/** curl streaming a 1 GiB file through `cat` on the same raw route, output discarded: MiB/s. */
async function curlThroughCat(ctx: BenchContext, url: string): Promise<number> {
  const file = join(ctx.workDir, 'python-bench-1g.bin');
  const handle = await open(file, 'w');
  const block = Buffer.alloc(4 * 1024 * 1024, 7);
  for (let written = 0; written < GiB; written += block.length) await handle.write(block);
  await handle.close();
  try {
    const started = performance.now();
    const { stdout } = await execFileAsync('curl', ['-sS', '-X', 'POST', '-T', file, '-H', 'content-type: application/octet-stream', '-H', 'accept: application/octet-stream', '-H', 'x-kindling-spec: {"image":"kindling/base","command":["cat"],"timeoutMs":600000}', '-o', '/dev/null', '-w', '%{size_download}', `${url}/v1/execute`], { timeout: 15 * 60_000 });
    const seconds = (performance.now() - started) / 1000;
    if (Number(stdout) !== GiB) throw new Error(`curl got ${stdout} bytes back, expected ${GiB}`);
    return GiB / (1024 * 1024) / seconds;
  } finally {
    await rm(file, { force: true });
  }
}
