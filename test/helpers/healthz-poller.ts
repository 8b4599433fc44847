/**
 * Polls GET /healthz of a server from a separate process, back to back on one kept-alive connection, and records how
 * long each answer took. A separate process because the test server runs in the test's own process: a blocked event
 * loop would stop an in-process poller's clock too, and the stall would go unseen.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

const POLLER = `
const http = require('node:http');
const url = process.argv[1] + '/healthz';
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let stopping = false;
process.stdin.on('end', () => { stopping = true; });
process.stdin.resume();
const once = () => new Promise((resolve, reject) => {
  const started = performance.now();
  http.get(url, { agent }, (response) => {
    response.resume();
    response.on('end', () => (response.statusCode === 200 ? resolve(performance.now() - started) : reject(new Error('healthz answered ' + response.statusCode))));
  }).on('error', reject);
});
(async () => {
  while (!stopping) process.stdout.write((await once()).toFixed(2) + '\\n');
  agent.destroy();
})().catch((error) => { process.stderr.write(String(error)); process.exitCode = 1; });
`;

export interface PollSummary {
  polls: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class HealthzPoller {
  private readonly latencies: number[] = [];
  private buffered = '';
  private readonly exited: Promise<number | null>;
  private stderr = '';

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      this.buffered += chunk;
      const lines = this.buffered.split('\n');
      this.buffered = lines.pop() ?? '';
      for (const line of lines) this.latencies.push(Number(line));
    });
    child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /** Starts polling `baseUrl`/healthz and resolves once a first answer came back. */
  static async start(baseUrl: string): Promise<HealthzPoller> {
    const poller = new HealthzPoller(spawn(process.execPath, ['-e', POLLER, baseUrl], { stdio: 'pipe' }));
    await poller.untilPolls(1);
    return poller;
  }

  get polls(): number {
    return this.latencies.length;
  }

  /** Resolves once `count` polls in all have been answered. */
  async untilPolls(count: number): Promise<void> {
    while (this.latencies.length < count) {
      const exited = await Promise.race([this.exited.then(() => true), new Promise<false>((resolve) => this.child.stdout.once('data', () => resolve(false)))]);
      if (exited && this.latencies.length < count) throw new Error(`the healthz poller stopped: ${this.stderr}`);
    }
  }

  /** The latencies of the polls answered from index `from` up to `to` (excluded). */
  summary(from = 0, to = this.latencies.length): PollSummary {
    const sorted = this.latencies.slice(from, to).sort((a, b) => a - b);
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN;
    return { polls: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted[sorted.length - 1] ?? NaN };
  }

  /** Stops after the poll in flight and summarises the latencies of polls answered from index `from` on. */
  async stop(from = 0): Promise<PollSummary> {
    this.child.stdin.end();
    const code = await this.exited;
    if (code !== 0) throw new Error(`the healthz poller failed (exit ${code}): ${this.stderr}`);
    return this.summary(from);
  }

  /** Ends the poller without waiting (clean-up after a failed test). */
  kill(): void {
    this.child.kill('SIGKILL');
  }
}
