/**
 * Metrics, usage metering and tracing against a real server with real executions (the native sandbox: its cgroup is
 * what the kernel accounts CPU time to).
 */
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { sample, series } from './helpers/prom-text.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const KEY = 'test-admin-key-observability';
const SCRAPE = 'test-scrape-token';

describe('observability: metrics, usage, tracing', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  const auth = { authorization: `Bearer ${KEY}` };
  const scrape = async (): Promise<string> => {
    const response = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${SCRAPE}` } });
    assert.equal(response.status, 200);
    return response.text();
  };
  const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
    const response = await fetch(`${server.url}/v1/functions/${name}`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    assert.ok(response.status === 201 || response.status === 200, await response.text());
  };

  /** The server's log lines (info and up), parsed. */
  const logLines: Record<string, unknown>[] = [];

  before(async () => {
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY, metricsToken: SCRAPE, logger });
  });
  after(async () => {
    await server?.stop();
  });

  it('protects /metrics with the scrape token (an API key works too)', async () => {
    assert.equal((await fetch(`${server.url}/metrics`)).status, 401);
    assert.equal((await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    assert.equal((await fetch(`${server.url}/metrics`, { headers: auth })).status, 200);
  });

  it('after 3 invocations of a handler the counter rose by 3 and one cold start was recorded', async () => {
    await deploy('obs-hello', { runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return b"hi " + body\n' });
    const before = await scrape();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${server.url}/v1/functions/obs-hello/invoke`, { method: 'POST', headers: auth, body: `n${i}` });
      assert.equal(response.status, 200);
      assert.equal(await response.text(), `hi n${i}`);
      assert.equal(response.headers.get('x-kindling-cold-start'), String(i === 0));
      ids.push(response.headers.get('x-kindling-invocation-id')!);
    }
    const afterText = await scrape();
    const fn = { function: 'obs-hello' };
    assert.equal(sample(afterText, 'kindling_invocations_total', fn) - sample(before, 'kindling_invocations_total', fn), 3);
    assert.equal(sample(afterText, 'kindling_invocations_total', { ...fn, cold: 'true' }) - sample(before, 'kindling_invocations_total', { ...fn, cold: 'true' }), 1);
    assert.equal(sample(afterText, 'kindling_sandbox_start_seconds_count', { executor: 'sandbox', cold: 'true' }) - sample(before, 'kindling_sandbox_start_seconds_count', { executor: 'sandbox', cold: 'true' }), 1);
    assert.equal(sample(afterText, 'kindling_invocation_duration_seconds_count', fn) - sample(before, 'kindling_invocation_duration_seconds_count', fn), 3);
    // The warm sandbox is idle in its pool now, and was counted when it was created.
    assert.equal(sample(afterText, 'kindling_warm_sandboxes', { ...fn, state: 'idle' }), 1);
    assert.ok(sample(afterText, 'kindling_sandboxes_total', { executor: 'sandbox', event: 'created', kind: 'warm' }) >= 1);
    assert.ok(sample(afterText, 'kindling_payload_bytes_total', { direction: 'in' }) >= 6);
    assert.ok(afterText.includes('kindling_process_resident_memory_bytes'));
    // Every series carries the node label, the host name when --node-name is not given.
    assert.deepEqual(series(afterText, 'kindling_queue_depth', { node: hostname() }), [0]);

    // Each invocation id is in the store, with what the console lists.
    const list = (await (await fetch(`${server.url}/v1/usage/invocations?limit=10`, { headers: auth })).json()) as { invocations: { id: string; function: string; coldStart: boolean; executor: string }[] };
    for (const id of ids) assert.ok(list.invocations.some((record) => record.id === id && record.function === 'obs-hello' && record.executor === 'sandbox'), `${id} not in the usage records`);
  });

  it('counts timeouts, OOM kills, errors by code, sandbox creations and destructions', async () => {
    const before = await scrape();
    const run = async (body: Record<string, unknown>): Promise<Record<string, unknown>> => {
      const response = await fetch(`${server.url}/v1/execute`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return (await response.json()) as Record<string, unknown>;
    };
    assert.equal((await run({ runtime: 'bash', code: 'sleep 5', timeoutMs: 300 })).timedOut, true);
    assert.equal((await run({ runtime: 'python', code: 'x = bytearray(200 * 1024 * 1024)\nprint(len(x))', memoryMb: 64 })).oomKilled, true);
    assert.equal((await fetch(`${server.url}/v1/functions/nope/invoke`, { method: 'POST', headers: auth })).status, 404);
    const afterText = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}): number => sample(afterText, name, labels) - sample(before, name, labels);
    assert.equal(delta('kindling_timeouts_total', { function: '_execute', executor: 'sandbox' }), 1);
    assert.equal(delta('kindling_oom_kills_total', { function: '_execute', executor: 'sandbox' }), 1);
    assert.equal(delta('kindling_http_errors_total', { code: 'FUNCTION_NOT_FOUND', status: '404' }), 1);
    assert.ok(delta('kindling_http_responses_total', { status: '404' }) >= 1);
    assert.equal(delta('kindling_sandboxes_total', { executor: 'sandbox', event: 'created', kind: 'execution' }), 2);
    assert.equal(delta('kindling_queue_wait_seconds_count', { kind: 'execution' }), 2);
  });

  it('meters a known CPU burn from the cgroup within 20%, with GB-seconds, bytes and CSV', async () => {
    // ~1 s of CPU in a busy loop, measured from inside by the process's own CPU clock.
    const code = 'import time\nstart = time.process_time()\nwhile time.process_time() - start < 1.0:\n    pass\nprint(round((time.process_time() - start) * 1000))\n';
    await deploy('obs-burn', { runtime: 'python', code, memoryMb: 256, timeoutMs: 60_000 });
    const response = await fetch(`${server.url}/v1/functions/obs-burn/invoke`, { method: 'POST', headers: auth, body: 'abc' });
    assert.equal(response.status, 200);
    const selfMs = Number(await response.text());
    const id = response.headers.get('x-kindling-invocation-id');
    const wallMs = Number(response.headers.get('x-kindling-duration-ms'));
    assert.ok(selfMs >= 1000, `the burn measured ${selfMs} ms of its own CPU`);

    const usage = (await (await fetch(`${server.url}/v1/usage?groupBy=function`, { headers: auth })).json()) as {
      rows: { tenant: string; function: string; invocations: number; cpuMs: number; gbSeconds: number; bytesIn: number; bytesOut: number }[];
    };
    const row = usage.rows.find((r) => r.function === 'obs-burn');
    assert.ok(row, JSON.stringify(usage));
    assert.equal(row.tenant, 'default');
    assert.equal(row.invocations, 1);
    // The cgroup counts the interpreter's start-up too: within 20% of the known burn (1 s).
    assert.ok(Math.abs(row.cpuMs - 1000) <= 200, `metered ${row.cpuMs} ms of CPU for a 1000 ms burn (self-measured ${selfMs} ms)`);
    assert.ok(Math.abs(row.gbSeconds - (0.25 * wallMs) / 1000) < 0.01, `gbSeconds ${row.gbSeconds} for 256 MB × ${wallMs} ms`);
    assert.equal(row.bytesIn, 3);
    assert.equal(row.bytesOut, `${selfMs}\n`.length);

    const records = (await (await fetch(`${server.url}/v1/usage/invocations?limit=5`, { headers: auth })).json()) as { invocations: { id: string; cpuMs: number; memoryPeakBytes: number }[] };
    const record = records.invocations.find((r) => r.id === id);
    assert.ok(record && record.memoryPeakBytes > 1_000_000, JSON.stringify(record));

    const byDay = (await (await fetch(`${server.url}/v1/usage?groupBy=day`, { headers: auth })).json()) as { rows: { day: string; invocations: number }[] };
    assert.equal(byDay.rows.length, 1);
    assert.equal(byDay.rows[0]!.day, new Date().toISOString().slice(0, 10));

    const csv = await fetch(`${server.url}/v1/usage?groupBy=function`, { headers: { ...auth, accept: 'text/csv' } });
    assert.match(csv.headers.get('content-type') ?? '', /^text\/csv/);
    const lines = (await csv.text()).trim().split('\n');
    assert.equal(lines[0], 'tenant,function,invocations,cpuMs,gbSeconds,bytesIn,bytesOut,storageGbHours');
    assert.ok(lines.some((line) => line.startsWith('default,obs-burn,1,')));
    assert.equal((await fetch(`${server.url}/v1/usage?groupBy=week`, { headers: auth })).status, 400);
    assert.equal((await fetch(`${server.url}/v1/usage`)).status, 401);
  });

  it('meters the CPU time of each warm handler call (the sandbox cgroup, read by the server) within 20%', async () => {
    // Each call burns ~500 ms of CPU by the process's own CPU clock and returns what it measured; body "fail" throws
    // after the burn (a failed call is metered too).
    const node =
      'export function handler(body) {\n' +
      '  const start = process.cpuUsage();\n' +
      '  let used = 0;\n' +
      '  while (used < 500) { const d = process.cpuUsage(start); used = (d.user + d.system) / 1000; }\n' +
      '  if (body.toString() === "fail") throw new Error("burnt " + Math.round(used));\n' +
      '  return String(Math.round(used));\n' +
      '}\n';
    const python =
      'import time\n' +
      'def handler(body):\n' +
      '    start = time.process_time()\n' +
      '    while time.process_time() - start < 0.5:\n' +
      '        pass\n' +
      '    used = round((time.process_time() - start) * 1000)\n' +
      '    if body == b"fail":\n' +
      '        raise RuntimeError("burnt %d" % used)\n' +
      '    return str(used)\n';
    await deploy('obs-burn-node', { runtime: 'node', handler: 'handler', code: node, timeoutMs: 60_000 });
    await deploy('obs-burn-py', { runtime: 'python', handler: 'handler', code: python, timeoutMs: 60_000 });
    const before = await scrape();
    const calls: { fn: string; id: string; selfMs: number; failed: boolean }[] = [];
    for (const fn of ['obs-burn-node', 'obs-burn-py']) {
      for (const body of ['a', 'b', 'fail']) {
        const response = await fetch(`${server.url}/v1/functions/${fn}/invoke`, { method: 'POST', headers: auth, body });
        assert.equal(response.status, 200);
        const text = await response.text();
        const failed = body === 'fail';
        assert.equal(response.headers.get('x-kindling-exit-code'), failed ? '1' : '0', text);
        const selfMs = Number(failed ? /burnt (\d+)/.exec(text)?.[1] : text);
        assert.ok(selfMs >= 500, `${fn} measured ${selfMs} ms of its own CPU: ${text.slice(0, 300)}`);
        calls.push({ fn, id: response.headers.get('x-kindling-invocation-id')!, selfMs, failed });
      }
    }
    const afterText = await scrape();
    const records = (await (await fetch(`${server.url}/v1/usage/invocations?limit=50`, { headers: auth })).json()) as {
      invocations: { id: string; status: string; cpuMs: number | null; memoryPeakBytes: number | null }[];
    };
    for (const call of calls) {
      const record = records.invocations.find((r) => r.id === call.id);
      assert.ok(record, `${call.id} has no usage record`);
      assert.equal(record.status, call.failed ? 'failed' : 'succeeded');
      assert.ok(record.cpuMs !== null && Math.abs(record.cpuMs - 500) <= 100, `${call.fn}: metered ${record.cpuMs} ms of CPU for a 500 ms burn (self-measured ${call.selfMs} ms)`);
      assert.ok(record.memoryPeakBytes !== null && record.memoryPeakBytes > 5_000_000, `${call.fn}: peak RSS ${record.memoryPeakBytes}`);
    }
    // The counter has every billed millisecond: the calls' and the sandbox's idle usage (its start, between calls),
    // which is what GET /v1/usage sums for the function (deployed here, so all of its usage is this test's).
    const usage = (await (await fetch(`${server.url}/v1/usage?groupBy=function`, { headers: auth })).json()) as { rows: { function: string; cpuMs: number; invocations: number }[] };
    for (const fn of ['obs-burn-node', 'obs-burn-py']) {
      const metered = calls.filter((c) => c.fn === fn).reduce((sum, c) => sum + records.invocations.find((r) => r.id === c.id)!.cpuMs!, 0);
      const row = usage.rows.find((r) => r.function === fn)!;
      assert.equal(row.invocations, 3, 'idle usage is not counted as invocations');
      assert.ok(row.cpuMs >= metered, `${fn}: the usage row (${row.cpuMs} ms) has the calls' CPU (${metered} ms) and the idle CPU`);
      const counted = sample(afterText, 'kindling_cpu_seconds_total', { function: fn }) - sample(before, 'kindling_cpu_seconds_total', { function: fn });
      assert.ok(Math.abs(counted * 1000 - row.cpuMs) < 1, `${fn}: kindling_cpu_seconds_total rose by ${counted} s, the usage row says ${row.cpuMs} ms`);
    }
  });

  it('continues a W3C traceparent: echoed with a new span id, passed to the sandbox, stored with the invocation', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const incoming = `00-${traceId}-00f067aa0ba902b7-01`;
    await deploy('obs-trace', { runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' });
    const response = await fetch(`${server.url}/v1/functions/obs-trace/invoke`, { method: 'POST', headers: { ...auth, traceparent: incoming } });
    const echoed = response.headers.get('traceparent') ?? '';
    assert.match(echoed, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    assert.notEqual(echoed, incoming);
    // The sandbox runs under the server's span.
    assert.equal(await response.text(), echoed);
    const id = response.headers.get('x-kindling-invocation-id');
    const records = (await (await fetch(`${server.url}/v1/usage/invocations?limit=5`, { headers: auth })).json()) as { invocations: { id: string; traceId: string }[] };
    assert.equal(records.invocations.find((r) => r.id === id)?.traceId, traceId);
    // Every log line of the request carries the trace id, fastify's own ("incoming request", "request completed") too.
    const requestId = response.headers.get('x-request-id');
    const lines = logLines.filter((line) => line.reqId === requestId);
    assert.ok(lines.length >= 2, `log lines of request ${requestId}: ${JSON.stringify(lines)}`);
    for (const line of lines) assert.equal(line.traceId, traceId, JSON.stringify(line));

    // An invalid header starts a new trace instead of failing the request.
    const fresh = await fetch(`${server.url}/healthz`, { headers: { traceparent: `00-${'0'.repeat(32)}-00f067aa0ba902b7-01` } });
    assert.equal(fresh.status, 200);
    const freshTrace = fresh.headers.get('traceparent') ?? '';
    assert.match(freshTrace, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    assert.ok(!freshTrace.includes('0'.repeat(32)));
  });
});
