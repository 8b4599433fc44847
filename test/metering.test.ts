/**
 * Metering the tenant cannot forge: code that tries to lower its bill is billed its real CPU time, on the sandbox and
 * the docker executor. The forgeries: patching its own clocks in a handler (node's process.cpuUsage, python's
 * resource.getrusage), a background thread burning CPU after the handler returned, and (docker) fake usage lines
 * written into the container's I/O directory. Real CPU is what the code measured with the unpatched clocks; the
 * bill must be within 10% of it (plus a few ms per call for the runtime's own work around the calls).
 *
 * Run: node --test --test-concurrency=1 dist/test/metering.test.js
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const KEY = 'test-admin-key-metering';
const BURN_MS = 1000;

/** Burns BURN_MS of CPU measured with the real clock, then makes every later reading of it say zero (or: no progress). */
const NODE_PATCHED = `const realCpuUsage = process.cpuUsage.bind(process);
export async function handler() {
  const start = realCpuUsage();
  let used = 0;
  while (used < ${BURN_MS}) { const d = realCpuUsage(start); used = (d.user + d.system) / 1000; }
  process.cpuUsage = () => ({ user: 0, system: 0 });
  process.hrtime.bigint = () => 0n;
  return String(Math.round(used));
}
`;

const PYTHON_PATCHED = `import resource
_real = resource.getrusage
_frozen = _real(resource.RUSAGE_SELF)
def handler(body):
    resource.getrusage = lambda who: _frozen
    start = _real(resource.RUSAGE_SELF)
    used = 0.0
    while used < ${BURN_MS / 1000}:
        now = _real(resource.RUSAGE_SELF)
        used = (now.ru_utime + now.ru_stime) - (start.ru_utime + start.ru_stime)
    return str(round(used * 1000))
`;

/**
 * "start": a worker thread burns BURN_MS of CPU after the handler returned; "poll": whether it finished, and how much
 * CPU the process used from the worker's creation to its end.
 */
const NODE_BACKGROUND = `import { Worker } from 'node:worker_threads';
let burnt = null;
export async function handler(body) {
  if (body.toString() === 'start') {
    // The real CPU of the whole episode: the process's clock from before the worker exists until it is gone (its
    // start and teardown are the code's CPU too; the main thread idles meanwhile).
    const start = process.cpuUsage();
    const worker = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      setTimeout(() => {
        const start = process.cpuUsage();
        let used = 0;
        while (used < ${BURN_MS}) { const d = process.cpuUsage(start); used = (d.user + d.system) / 1000; }
        parentPort.postMessage(used);
      }, 50);\`, { eval: true });
    worker.on('message', () => void worker.terminate());
    worker.on('exit', () => { const d = process.cpuUsage(start); burnt = (d.user + d.system) / 1000; });
    return 'started';
  }
  return burnt === null ? 'running' : String(Math.round(burnt));
}
`;

async function call(server: TestServer, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, ...(body === undefined || typeof body === 'string' ? {} : { 'content-type': 'application/json' }), ...headers },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
}

function suite(executor: 'sandbox' | 'docker', unavailable: string | null): void {
  describe(`metering that user code cannot forge (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;

    before(async () => {
      server = await startTestServer({ executor, adminKey: KEY, functionPools: { genericPerShape: 0 } });
    });
    after(async () => {
      await server?.stop();
    });

    const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
      const response = await call(server, 'PUT', `/v1/functions/${name}`, { ...spec, executor, timeoutMs: 60_000 });
      assert.ok(response.status === 201 || response.status === 200, await response.text());
    };
    const invoke = async (name: string, body = ''): Promise<{ id: string; text: string }> => {
      const response = await call(server, 'POST', `/v1/functions/${name}/invoke`, body);
      const text = await response.text();
      assert.equal(response.status, 200, text);
      assert.equal(response.headers.get('x-kindling-exit-code'), '0', text);
      return { id: response.headers.get('x-kindling-invocation-id')!, text };
    };
    const recordOf = async (id: string): Promise<{ cpuMs: number | null }> => {
      const list = (await (await call(server, 'GET', '/v1/usage/invocations?limit=200')).json()) as { invocations: { id: string; cpuMs: number | null }[] };
      const record = list.invocations.find((r) => r.id === id);
      assert.ok(record, `no usage record for ${id}`);
      return record;
    };
    /** Every CPU millisecond billed to a function: its invocations' and its warm sandboxes' idle usage. */
    const billedMs = async (name: string): Promise<number> => {
      const usage = (await (await call(server, 'GET', '/v1/usage?groupBy=function')).json()) as { rows: { function: string; cpuMs: number }[] };
      return usage.rows.find((row) => row.function === name)?.cpuMs ?? 0;
    };
    const near = (billed: number, real: number, what: string, slackMs = 0): void => {
      console.log(`${executor} ${what}: billed ${billed} ms, really used ${real} ms`);
      assert.ok(Math.abs(billed - real) <= real * 0.1 + slackMs, `${what}: billed ${billed} ms of CPU for ${real} ms really used`);
    };

    for (const [runtime, code] of [
      ['node', NODE_PATCHED],
      ['python', PYTHON_PATCHED],
    ] as const) {
      it(`${runtime}: a handler that patches its CPU clock is billed its real CPU time`, async () => {
        const name = `patched-${runtime}`;
        await deploy(name, { runtime, handler: 'handler', code });
        // Twice: the first call is a cold start, the second runs in the sandbox whose clock the first one patched.
        for (let i = 0; i < 2; i++) {
          const { id, text } = await invoke(name);
          const real = Number(text);
          assert.ok(real >= BURN_MS, `the handler burnt ${text}`);
          const { cpuMs } = await recordOf(id);
          assert.ok(cpuMs !== null, 'the call has a CPU time');
          near(cpuMs, real, `${runtime} call ${i + 1}`, 20);
        }
      });
    }

    it('a worker thread burning CPU after the handler returned is billed (idle usage of the function)', async () => {
      await deploy('background', { runtime: 'node', handler: 'handler', code: NODE_BACKGROUND });
      await invoke('background', 'poll');
      const before = await billedMs('background');
      await invoke('background', 'start');
      let calls = 1;
      let burnt = 'running';
      while (burnt === 'running') {
        await new Promise((resolve) => setTimeout(resolve, 200));
        burnt = (await invoke('background', 'poll')).text;
        calls++;
      }
      const real = Number(burnt);
      assert.ok(real >= BURN_MS, `the worker burnt ${burnt}`);
      // The idle CPU is billed at the start of the next call at the latest.
      await invoke('background', 'poll');
      calls++;
      const billed = (await billedMs('background')) - before;
      // Each call costs the runtime a few ms of its own (and the worker's start): a small allowance per call.
      near(billed, real, 'background thread', 5 * calls + 50);
    });

    it('a command that writes fake usage lines into its I/O directory is billed its real CPU time', async () => {
      const burn = `import time
s = time.process_time()
while time.process_time() - s < ${BURN_MS / 1000}:
    pass
print(round(time.process_time() * 1000))`;
      // Fake "no CPU" lines into the pipe the docker executor once read usage from (absent now; absent on sandbox).
      const script = `{ [ -p /.kindling/.io/usage ] && printf '1\\n1\\n' > /.kindling/.io/usage; } 2>/dev/null; python3 -c '${burn}'`;
      const response = await call(server, 'POST', '/v1/execute', { image: 'kindling/python', command: ['sh', '-c', script], executor, timeoutMs: 60_000 });
      const result = (await response.json()) as { id: string; exitCode: number; stdout: string; stderr: string };
      assert.equal(result.exitCode, 0, result.stderr);
      const real = Number(result.stdout.trim().split('\n').pop());
      assert.ok(real >= BURN_MS, `the command burnt ${result.stdout}`);
      const { cpuMs } = await recordOf(result.id);
      assert.ok(cpuMs !== null, 'the execution has a CPU time');
      // The shell and python's start are real CPU of the execution too: a small allowance.
      near(cpuMs, real, 'command with forged usage lines', 60);
    });
  });
}

suite('sandbox', await sandboxUnavailableReason());
suite('docker', await dockerUnavailableReason());
