import { createHash } from 'node:crypto';
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * A minimal HTTP client (node:http with a keep-alive agent): no SDK, no fetch/undici layers, so what is timed is the
 * server's work plus one loopback round trip and JSON parsing.
 */
export interface ExecuteResult {
  id: string;
  exitCode: number;
  signal?: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  coldStart: boolean;
  executor: string;
  timedOut: boolean;
  oomKilled: boolean;
  truncated: boolean;
  timings?: { queuedMs: number; startMs: number; runMs: number };
}

export interface TimedExecute {
  /** Client-side wall time: request written to response parsed. */
  ms: number;
  result: ExecuteResult;
}

export class BenchClient {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 64 });
  private readonly base: URL;

  constructor(url: string) {
    this.base = new URL(url);
  }

  async getJson(path: string): Promise<{ status: number; body: unknown }> {
    const { status, body } = await this.send('GET', path, null);
    return { status, body: body.length > 0 ? JSON.parse(body.toString('utf8')) : null };
  }

  /** POST /v1/execute with a spec, or with a body serialized ahead of time (huge payloads: keep encoding out of the timing). */
  async execute(spec: Record<string, unknown> | Buffer): Promise<TimedExecute> {
    const body = Buffer.isBuffer(spec) ? spec : Buffer.from(JSON.stringify(spec));
    const started = performance.now();
    const response = await this.send('POST', '/v1/execute', body);
    const parsed = JSON.parse(response.body.toString('utf8')) as ExecuteResult & { error?: { code: string; message: string } };
    const ms = performance.now() - started;
    if (response.status !== 200) {
      throw new Error(`POST /v1/execute answered ${response.status}: ${parsed.error ? `${parsed.error.code}: ${parsed.error.message}` : response.body.toString('utf8').slice(0, 300)}`);
    }
    return { ms, result: parsed };
  }

  /** Like execute, but a non-zero exit or a timeout is an error. */
  async executeOk(spec: Record<string, unknown> | Buffer): Promise<TimedExecute> {
    const timed = await this.execute(spec);
    const { result } = timed;
    if (result.exitCode !== 0 || result.timedOut) {
      throw new Error(`execution failed: exit ${result.exitCode}${result.timedOut ? ' (timed out)' : ''}: ${String(result.stderr).slice(0, 500)}`);
    }
    return timed;
  }

  /**
   * Raw mode: the payload streams as the request body (`application/octet-stream`, spec in `x-kindling-spec`). With
   * `rawOutput` stdout streams back and is hashed as it arrives (never held); the exit code comes in a trailer.
   */
  executeRaw(spec: Record<string, unknown>, payload: Buffer, rawOutput: boolean): Promise<{ ms: number; sha256: string | null; exitCode: number; result: ExecuteResult | null }> {
    return new Promise((resolve, reject) => {
      const started = performance.now();
      const req = request(
        {
          host: this.base.hostname,
          port: this.base.port,
          method: 'POST',
          path: '/v1/execute',
          agent: this.agent,
          headers: {
            'content-type': 'application/octet-stream',
            'content-length': payload.length,
            'x-kindling-spec': JSON.stringify(spec),
            ...(rawOutput ? { accept: 'application/octet-stream' } : {}),
          },
        },
        (res) => {
          const hash = createHash('sha256');
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => (rawOutput && res.statusCode === 200 ? hash.update(chunk) : chunks.push(chunk)));
          res.on('error', reject);
          res.on('end', () => {
            const ms = performance.now() - started;
            if (res.statusCode !== 200) {
              reject(new Error(`raw POST /v1/execute answered ${res.statusCode}: ${Buffer.concat(chunks).toString('utf8').slice(0, 300)}`));
              return;
            }
            if (rawOutput) {
              resolve({ ms, sha256: hash.digest('hex'), exitCode: Number(res.trailers['x-kindling-exit-code'] ?? NaN), result: null });
              return;
            }
            const result = JSON.parse(Buffer.concat(chunks).toString('utf8')) as ExecuteResult;
            resolve({ ms, sha256: null, exitCode: result.exitCode, result });
          });
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }

  private send(method: string, path: string, body: Buffer | null): Promise<{ status: number; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: this.base.hostname,
          port: this.base.port,
          method,
          path,
          agent: this.agent,
          headers: body ? { 'content-type': 'application/json', 'content-length': body.length } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body ?? undefined);
    });
  }
}
