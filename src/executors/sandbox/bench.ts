/**
 * Executor-level measurements of the sandbox (no HTTP): `node dist/src/executors/sandbox/bench.js [runs]`.
 * Each row alternates Kindling and its raw baseline in the same run; medians and p95 in ms.
 * Needs root, bubblewrap and the runtime images (KINDLING_IMAGES_DIR, default /var/lib/kindling/images).
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Readable, Writable } from 'node:stream';
import type { RunSpec } from '../../core/types.js';
import { readLayout } from './rootfs.js';
import { SandboxExecutor } from './index.js';

const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
const runs = Number(process.argv[2] ?? 50);
/** Launchers kept ready (the executor's default is 2); pass 0 to measure the on-demand path. */
const prewarm = Number(process.argv[3] ?? 2);
const MiB = 1024 * 1024;

function spec(image: string, command: string[], stdin = false): RunSpec {
  return {
    id: 'bench',
    image,
    command,
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8' },
    workdir: '/work',
    limits: { timeoutMs: 60_000, memoryMb: 512, cpus: 2, pids: 256, outputBytes: 1 << 30, diskMb: 64, openFiles: 1024 },
    network: 'none',
    stdin,
    files: [],
    labels: {},
  };
}

/** Feeds `input` (if any) with backpressure and counts output bytes; resolves when both streams ended. */
async function pump(stdin: Writable | null, stdout: Readable, stderr: Readable, input?: Buffer): Promise<number> {
  let bytes = 0;
  stdout.on('data', (c: Buffer) => (bytes += c.length));
  stderr.resume();
  const ended = Promise.all([new Promise((r) => stdout.once('end', r)), new Promise((r) => stderr.once('end', r))]);
  if (stdin) {
    stdin.on('error', () => {});
    if (input) {
      for (let off = 0; off < input.length; off += MiB) {
        if (!stdin.write(input.subarray(off, off + MiB))) await new Promise((r) => stdin.once('drain', r));
      }
    }
    stdin.end();
  }
  await ended;
  return bytes;
}

async function viaExecutor(ex: SandboxExecutor, s: RunSpec, input?: Buffer): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const e = await ex.start(s);
  const bytes = await pump(e.stdin, e.stdout, e.stderr, input);
  const info = await e.wait();
  const ms = performance.now() - t0;
  if (info.exitCode !== 0) throw new Error(`${s.command.join(' ')} exited ${info.exitCode}`);
  await e.disposed;
  return { ms, bytes };
}

async function viaSpawn(file: string, args: string[], input?: Buffer): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const child = spawn(file, args, { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'], env: {} });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => resolve(code));
  });
  const bytes = await pump(child.stdin, child.stdout!, child.stderr!, input);
  const code = await exited;
  if (code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${code}`);
  return { ms: performance.now() - t0, bytes };
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};
const median = (xs: number[]): number => quantile(xs, 0.5);
const f = (x: number): string => x.toFixed(1);

async function compare(
  title: string,
  n: number,
  a: () => Promise<{ ms: number }>,
  b: () => Promise<{ ms: number }>,
  bName: string,
): Promise<void> {
  const as: number[] = [];
  const bs: number[] = [];
  for (let i = 0; i < 3; i++) {
    await a();
    await b();
  }
  for (let i = 0; i < n; i++) {
    as.push((await a()).ms);
    bs.push((await b()).ms);
  }
  console.log(
    `| ${title} | ${f(median(as))} (p95 ${f(quantile(as, 0.95))}) | ${bName}: ${f(median(bs))} (p95 ${f(quantile(bs, 0.95))}) | ${(median(as) / median(bs)).toFixed(2)}x |`,
  );
}

async function main(): Promise<void> {
  const stateDir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-bench-'));
  chmodSync(stateDir, 0o755);
  const ex = new SandboxExecutor({ imagesDir, stateDir, ownerId: `bench-${process.pid}`, instanceId: 'bench', prewarmPerShape: prewarm });
  const status = await ex.probe();
  if (!status.ready) throw new Error(`sandbox not ready: ${status.reason}`);
  const base = readLayout(imagesDir, 'base')!;
  const python = readLayout(imagesDir, 'python')!;
  const node = readLayout(imagesDir, 'node');
  const plain = (layout: typeof base, command: string[]): string[] => [
    '--unshare-all',
    '--die-with-parent',
    ...layout.bindArgs,
    '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--tmpfs', '/work', '--chdir', '/work',
    '--clearenv', '--setenv', 'PATH', '/usr/bin:/bin', '--',
    ...command,
  ];
  console.log(`sandbox executor vs baselines, ${runs} runs each, alternated; ms`);
  console.log('| case | executor median | baseline median | ratio |');
  console.log('|---|---|---|---|');
  await compare('`echo hi`', runs, () => viaExecutor(ex, spec('kindling/base', ['echo', 'hi'])), () => viaSpawn('/usr/bin/bwrap', plain(base, ['echo', 'hi'])), 'plain bwrap as root, same binds');
  await compare('`python3 -c pass`', runs, () => viaExecutor(ex, spec('kindling/python', ['python3', '-c', 'pass'])), () => viaSpawn('/usr/bin/python3', ['-c', 'pass']), 'host /usr/bin/python3');
  await compare('`python3 -c pass`', runs, () => viaExecutor(ex, spec('kindling/python', ['python3', '-c', 'pass'])), () => viaSpawn('/usr/bin/bwrap', plain(python, ['python3', '-c', 'pass'])), 'plain bwrap');
  if (node) {
    await compare('`node -e 0`', Math.min(runs, 20), () => viaExecutor(ex, spec('kindling/node', ['node', '-e', '0'])), () => viaSpawn(process.execPath, ['-e', '0']), `host node ${process.version} (clean env; the image has its own node)`);
    await compare('`node -e 0`', Math.min(runs, 20), () => viaExecutor(ex, spec('kindling/node', ['node', '-e', '0'])), () => viaSpawn('/usr/bin/bwrap', plain(node, ['node', '-e', '0'])), 'plain bwrap, same image');
  }
  const oneMiB = Buffer.alloc(MiB, 7);
  await compare('`echo hi` (again, for the next row)', Math.min(runs, 20), () => viaExecutor(ex, spec('kindling/base', ['echo', 'hi'])), () => viaSpawn('/usr/bin/echo', ['hi']), 'host echo');
  await compare('1 MiB stdin -> `cat` -> stdout', Math.min(runs, 20), () => viaExecutor(ex, spec('kindling/base', ['cat'], true), oneMiB), () => viaSpawn('/usr/bin/cat', [], oneMiB), 'host cat');
  const big = Buffer.alloc(100 * MiB, 7);
  const tput: number[] = [];
  const host: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await viaExecutor(ex, spec('kindling/base', ['cat'], true), big);
    if (r.bytes !== big.length) throw new Error(`got ${r.bytes} bytes`);
    tput.push(big.length / MiB / (r.ms / 1000));
    const h = await viaSpawn('/usr/bin/cat', [], big);
    host.push(big.length / MiB / (h.ms / 1000));
  }
  console.log(`| 100 MiB stdin -> \`cat\` -> stdout | ${f(median(tput))} MiB/s | host cat: ${f(median(host))} MiB/s | ${(median(tput) / median(host)).toFixed(2)}x |`);
  await ex.close();
  rmSync(stateDir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
