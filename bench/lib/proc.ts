import { execFile, spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';

export const DOCKER = '/usr/bin/docker';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs a command to completion and returns its stdout; rejects on a non-zero exit. */
export function execText(file: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${file} ${args.join(' ')}: ${error.message} ${String(stderr).trim()}`));
      else resolve(String(stdout));
    });
  });
}

export const dockerCli = (args: string[], timeoutMs = 60_000): Promise<string> => execText(DOCKER, args, timeoutMs);

export interface TimedRun {
  ms: number;
  exitCode: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: string;
}

export interface TimedSpawnOptions {
  /** A file whose contents become stdin, opened as the child's fd 0 (like `cmd < file`). */
  stdinFile?: string;
  env?: NodeJS.ProcessEnv;
  /** Keep at most this many stdout bytes (the rest is read and dropped). */
  maxStdoutBytes?: number;
  timeoutMs?: number;
}

/**
 * Wall time of one process from spawn until it has exited and its output is closed, measured in this process.
 * stdin is /dev/null unless a file is given.
 */
export async function timedSpawn(file: string, args: string[], options: TimedSpawnOptions = {}): Promise<TimedRun> {
  const input = options.stdinFile ? await open(options.stdinFile, 'r') : null;
  try {
    return await new Promise<TimedRun>((resolve, reject) => {
      const started = performance.now();
      const child = spawn(file, args, {
        stdio: [input ? input.fd : 'ignore', 'pipe', 'pipe'],
        env: options.env ?? process.env,
      });
      const chunks: Buffer[] = [];
      let kept = 0;
      const cap = options.maxStdoutBytes ?? 256 * 1024 * 1024;
      let stderr = '';
      child.stdout?.on('data', (chunk: Buffer) => {
        if (kept < cap) {
          chunks.push(chunk);
          kept += chunk.length;
        }
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        if (stderr.length < 8192) stderr += chunk.toString('utf8');
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once('close', (exitCode, signal) => {
        const ms = performance.now() - started;
        clearTimeout(timer);
        resolve({ ms, exitCode, signal, stdout: Buffer.concat(chunks), stderr });
      });
    });
  } finally {
    await input?.close();
  }
}

/** Like timedSpawn, but a non-zero exit is an error (a broken baseline must not produce a figure). */
export async function timedSpawnOk(file: string, args: string[], options: TimedSpawnOptions = {}): Promise<TimedRun> {
  const run = await timedSpawn(file, args, options);
  if (run.exitCode !== 0) {
    throw new Error(`${file} ${args.join(' ')} exited ${run.exitCode ?? run.signal}: ${run.stderr.trim().slice(0, 500)}`);
  }
  return run;
}
