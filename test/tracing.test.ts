/**
 * Tracing against a real server (the native sandbox executor) exporting to a real OTLP/HTTP receiver in this test: a
 * node http server taking POST /v1/traces as the SDK's exporter sends it (JSON, `application/json`: the OTLP JSON
 * encoding, ids in hex, times as strings of nanoseconds).
 */
import assert from 'node:assert/strict';
import { Agent as HttpAgent, createServer as createHttpServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { createServer } from '../src/server.js';
import { newDataDir, sandboxUnavailableReason, startTestServer, testServerConfig, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const KEY = 'test-admin-key-tracing';
const auth = { authorization: `Bearer ${KEY}` };

type AnyValue = { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number };
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes?: { key: string; value: AnyValue }[];
  status?: { code?: number; message?: string };
}
/** A received span with its attributes (and its resource's) as a plain object. */
interface Span extends OtlpSpan {
  attrs: Record<string, string | number | boolean>;
  resource: Record<string, string | number | boolean>;
}

const SPAN_KIND_SERVER = 2;
const SPAN_KIND_CONSUMER = 5;
const STATUS_ERROR = 2;

const plain = (list: { key: string; value: AnyValue }[] | undefined): Record<string, string | number | boolean> =>
  Object.fromEntries(
    (list ?? []).map(({ key, value }) => [key, value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : undefined) ?? value.boolValue ?? value.doubleValue ?? '']),
  );

/** An OTLP/HTTP receiver: keeps every span it is sent. */
class Receiver {
  readonly spans: Span[] = [];
  readonly contentTypes = new Set<string>();
  private server!: Server;
  url = '';

  async start(): Promise<void> {
    this.server = createHttpServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        if (request.method !== 'POST' || request.url !== '/v1/traces') {
          response.writeHead(404).end();
          return;
        }
        this.contentTypes.add(String(request.headers['content-type']));
        let body = Buffer.concat(chunks);
        if (request.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        const payload = JSON.parse(body.toString('utf8')) as { resourceSpans: { resource?: { attributes?: { key: string; value: AnyValue }[] }; scopeSpans: { spans: OtlpSpan[] }[] }[] };
        for (const resourceSpans of payload.resourceSpans) {
          const resource = plain(resourceSpans.resource?.attributes);
          for (const scope of resourceSpans.scopeSpans) for (const span of scope.spans) this.spans.push({ ...span, attrs: plain(span.attributes), resource });
        }
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Waits until the spans of `traceId` include every name in `names`; returns that trace's spans. */
  async trace(traceId: string, names: string[], what: string): Promise<Span[]> {
    const of = (): Span[] => this.spans.filter((span) => span.traceId === traceId);
    await waitFor(async () => names.every((name) => of().some((span) => span.name === name)), 30_000, `${what}: spans ${names.join(', ')} of trace ${traceId} (have ${of().map((s) => s.name).join(', ')})`);
    return of();
  }
}

const PHASES = ['queue', 'start', 'run', 'record'];
const ns = (value: string): bigint => BigInt(value);

/** The phase spans under `parent`, checked: one each, in order, each starting where the one before ended. */
function phasesOf(spans: Span[], parent: Span): Span[] {
  const phases = PHASES.map((name) => {
    const found = spans.filter((span) => span.name === name && span.parentSpanId === parent.spanId);
    assert.equal(found.length, 1, `one ${name} span under ${parent.name}: ${JSON.stringify(spans.map((s) => [s.name, s.parentSpanId]))}`);
    return found[0]!;
  });
  for (let i = 0; i < phases.length; i++) {
    const phase = phases[i]!;
    assert.ok(ns(phase.startTimeUnixNano) <= ns(phase.endTimeUnixNano), `${phase.name} ends after it starts`);
    if (i > 0) assert.equal(phase.startTimeUnixNano, phases[i - 1]!.endTimeUnixNano, `${phase.name} starts when ${phases[i - 1]!.name} ends`);
  }
  assert.ok(ns(phases[0]!.startTimeUnixNano) >= ns(parent.startTimeUnixNano), 'the queue starts within its parent');
  return phases;
}

const traceparentOf = (span: Span): string => `00-${span.traceId}-${span.spanId}-01`;
const newTraceId = (): string => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('hex');
const newSpanId = (): string => Buffer.from(crypto.getRandomValues(new Uint8Array(8))).toString('hex');

describe('tracing: OTLP/HTTP spans of requests and invocation phases', { skip: unavailable ?? false }, () => {
  const receiver = new Receiver();
  let server: TestServer;
  const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
    const response = await fetch(`${server.url}/v1/functions/${name}`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    assert.ok(response.status === 201 || response.status === 200, await response.text());
  };
  const invoke = (name: string, traceparent: string, headers: Record<string, string> = {}): Promise<Response> =>
    fetch(`${server.url}/v1/functions/${name}/invoke`, { method: 'POST', headers: { ...auth, traceparent, ...headers }, body: 'in' });

  before(async () => {
    await receiver.start();
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY, otlp: { url: `${receiver.url}/v1/traces`, batchDelayMs: 50 } });
  });
  after(async () => {
    await server?.stop();
    await receiver.stop();
  });

  it('a sync invocation: the request span continues the caller, is what the response and the sandbox name, and has the phases in order', async () => {
    await deploy('tr-env', { runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' });
    const traceId = newTraceId();
    const callerSpanId = newSpanId();
    const response = await invoke('tr-env', `00-${traceId}-${callerSpanId}-01`);
    assert.equal(response.status, 200);
    const echoed = response.headers.get('traceparent') ?? '';
    const sandboxSaw = await response.text();
    const invocationId = response.headers.get('x-kindling-invocation-id');

    const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', ...PHASES], 'sync invoke');
    assert.ok(receiver.contentTypes.has('application/json'), `the exporter sent JSON: ${[...receiver.contentTypes].join(', ')}`);
    const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
    assert.equal(request.kind, SPAN_KIND_SERVER);
    assert.equal(request.parentSpanId, callerSpanId, "the request span's parent is the caller's span");
    assert.equal(echoed, traceparentOf(request), 'the response names the exported request span');
    assert.equal(sandboxSaw, echoed, "the sandbox's TRACEPARENT names the request span");
    assert.deepEqual(
      {
        tenant: request.attrs['kindling.tenant'],
        fn: request.attrs['kindling.function'],
        version: request.attrs['kindling.function.version'],
        id: request.attrs['kindling.invocation.id'],
        executor: request.attrs['kindling.executor'],
        mode: request.attrs['kindling.mode'],
        exit: request.attrs['kindling.exit_code'],
        outcome: request.attrs['kindling.outcome'],
        status: request.attrs['http.response.status_code'],
        route: request.attrs['http.route'],
      },
      { tenant: 'default', fn: 'tr-env', version: 1, id: invocationId, executor: 'sandbox', mode: 'sync', exit: 0, outcome: 'succeeded', status: 200, route: '/v1/functions/:name/invoke' },
    );
    assert.notEqual(request.status?.code, STATUS_ERROR);
    const [, start, run] = phasesOf(spans, request);
    assert.equal(typeof start!.attrs['kindling.cold_start'], 'boolean', 'the start phase says cold or warm');
    assert.equal(start!.attrs['kindling.executor'], 'sandbox');
    assert.equal(run!.attrs['kindling.exit_code'], 0);
    for (const span of spans) assert.notEqual(span.status?.code, STATUS_ERROR, `${span.name} is no error`);
    assert.equal(request.resource['service.name'], 'kindling');
    assert.equal(typeof request.resource['host.name'], 'string');
    assert.equal(typeof request.resource['service.instance.id'], 'string');
  });

  it('every span is timed on one clock: a wall clock that has drifted from the monotonic one puts no phase outside its parent', async (t) => {
    // A long-lived process sees Date.now() and the monotonic clock drift apart (NTP slews only the first); here the
    // drift is made: the wall clock runs 50 ms ahead, then 50 ms behind, for a sync and an async invocation each.
    await deploy('tr-drift', { runtime: 'bash', code: 'true' });
    const realNow = Date.now.bind(Date);
    for (const skewMs of [50, -50]) {
      t.mock.method(Date, 'now', () => realNow() + skewMs);
      try {
        for (const async of [false, true]) {
          const traceId = newTraceId();
          const response = await invoke('tr-drift', `00-${traceId}-${newSpanId()}-01`, async ? { 'x-kindling-async': 'true' } : {});
          assert.equal(response.status, async ? 202 : 200, await response.text());
          const names = ['POST /v1/functions/:name/invoke', ...(async ? ['invoke tr-drift'] : []), ...PHASES];
          const spans = await receiver.trace(traceId, names, `skew ${skewMs} ms, ${async ? 'async' : 'sync'}`);
          const parent = spans.find((span) => span.name === (async ? 'invoke tr-drift' : 'POST /v1/functions/:name/invoke'))!;
          phasesOf(spans, parent);
        }
      } finally {
        t.mock.restoreAll();
      }
    }
  });

  it("a handler: warm and cold starts are told apart on the start phase; each call's TRACEPARENT names its request span", async () => {
    await deploy('tr-handler', { runtime: 'python', handler: 'handler', code: 'import os\ndef handler(body):\n    return os.environ.get("TRACEPARENT", "none")\n' });
    await deploy('tr-handler-node', { runtime: 'node', handler: 'handler', code: 'export const handler = () => process.env.TRACEPARENT ?? "none";' });
    const node = await invoke('tr-handler-node', `00-${newTraceId()}-${newSpanId()}-01`);
    assert.equal(await node.text(), node.headers.get('traceparent'), 'node: the call sees its own traceparent');
    const colds: unknown[] = [];
    for (let i = 0; i < 2; i++) {
      const traceId = newTraceId();
      const response = await invoke('tr-handler', `00-${traceId}-${newSpanId()}-01`);
      // The same warm sandbox serves the second call: it sees that call's traceparent, not the first's.
      assert.equal(await response.text(), response.headers.get('traceparent'), `python call ${i}: the call sees its own traceparent`);
      const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', ...PHASES], `handler call ${i}`);
      const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
      const [, start] = phasesOf(spans, request);
      assert.equal(String(start!.attrs['kindling.cold_start']), response.headers.get('x-kindling-cold-start'));
      colds.push(start!.attrs['kindling.cold_start']);
    }
    assert.deepEqual(colds, [true, false]);
  });

  it("an async invocation's run continues the trace of the request that accepted it", async () => {
    await deploy('tr-async', { runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' });
    const traceId = newTraceId();
    const response = await invoke('tr-async', `00-${traceId}-${newSpanId()}-01`, { 'x-kindling-async': 'true' });
    assert.equal(response.status, 202);
    const accepted = response.headers.get('traceparent') ?? '';
    const { invocationId } = (await response.json()) as { invocationId: string };
    const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', 'invoke tr-async', ...PHASES], 'async invoke');
    const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
    assert.equal(accepted, traceparentOf(request));
    assert.equal(request.attrs['kindling.mode'], 'async');
    assert.equal(request.attrs['kindling.invocation.id'], invocationId);
    const run = spans.find((span) => span.name === 'invoke tr-async')!;
    assert.equal(run.kind, SPAN_KIND_CONSUMER);
    assert.equal(run.parentSpanId, request.spanId, "the run's span is a child of the accepting request's");
    assert.equal(run.attrs['kindling.invocation.id'], invocationId);
    assert.equal(run.attrs['kindling.mode'], 'async');
    assert.equal(run.attrs['kindling.outcome'], 'succeeded');
    phasesOf(spans, run);
    // The sandbox ran under the run's span.
    const output = await fetch(`${server.url}/v1/invocations/${invocationId}/output`, { headers: auth });
    assert.equal(await output.text(), traceparentOf(run));
  });

  it('a failing function is an outcome, not an error status', async () => {
    await deploy('tr-fail', { runtime: 'bash', code: 'exit 3' });
    const traceId = newTraceId();
    const response = await invoke('tr-fail', `00-${traceId}-${newSpanId()}-01`);
    assert.equal(response.headers.get('x-kindling-exit-code'), '3');
    const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', ...PHASES], 'failing function');
    const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
    assert.equal(request.attrs['kindling.outcome'], 'failed');
    assert.equal(request.attrs['kindling.exit_code'], 3);
    for (const span of spans) assert.notEqual(span.status?.code, STATUS_ERROR, `${span.name} is no error`);
  });

  it('a timeout and an OOM kill are said by the attributes', async () => {
    await deploy('tr-slow', { runtime: 'bash', code: 'sleep 30', timeoutMs: 300 });
    await deploy('tr-oom', { runtime: 'python', code: 'b = bytearray(512 * 1024 * 1024)\nprint(len(b))', memoryMb: 64 });
    for (const [name, outcome, flag] of [
      ['tr-slow', 'timeout', 'kindling.timed_out'],
      ['tr-oom', 'oom', 'kindling.oom_killed'],
    ] as const) {
      const traceId = newTraceId();
      const response = await invoke(name, `00-${traceId}-${newSpanId()}-01`);
      assert.equal(response.status, 200, await response.text());
      const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', ...PHASES], name);
      const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
      assert.equal(request.attrs['kindling.outcome'], outcome, `${name}: ${JSON.stringify(request.attrs)}`);
      assert.equal(request.attrs[flag], true);
      const run = spans.find((span) => span.name === 'run')!;
      assert.equal(run.attrs['kindling.outcome'], outcome);
      for (const span of spans) assert.notEqual(span.status?.code, STATUS_ERROR, `${name}: ${span.name} is no error of the platform`);
    }
  });

  it('a one-off execution has its own phases (no record: nothing is stored)', async () => {
    const traceId = newTraceId();
    const response = await fetch(`${server.url}/v1/execute`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json', traceparent: `00-${traceId}-${newSpanId()}-01` },
      body: JSON.stringify({ runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' }),
    });
    const result = (await response.json()) as { stdout: string; id: string };
    const spans = await receiver.trace(traceId, ['POST /v1/execute', 'queue', 'start', 'run'], 'execute');
    const request = spans.find((span) => span.name === 'POST /v1/execute')!;
    assert.equal(result.stdout, traceparentOf(request));
    assert.equal(request.attrs['kindling.execution.id'], result.id);
    assert.equal(request.attrs['kindling.mode'], 'sync');
    assert.equal(request.attrs['kindling.outcome'], 'succeeded');
    assert.deepEqual(spans.filter((span) => span.parentSpanId === request.spanId).map((span) => span.name).sort(), ['queue', 'run', 'start']);
  });

  it('a streamed execution (SSE) is mode stream, and its request span ends with the stream', async () => {
    const traceId = newTraceId();
    const response = await fetch(`${server.url}/v1/execute`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json', accept: 'text/event-stream', traceparent: `00-${traceId}-${newSpanId()}-01` },
      body: JSON.stringify({ runtime: 'bash', code: 'echo one; echo two' }),
    });
    assert.match(await response.text(), /event: exit/);
    const spans = await receiver.trace(traceId, ['POST /v1/execute', 'queue', 'start', 'run'], 'SSE execute');
    const request = spans.find((span) => span.name === 'POST /v1/execute')!;
    assert.equal(request.attrs['kindling.mode'], 'stream');
    assert.equal(request.attrs['kindling.outcome'], 'succeeded');
  });

  it("a caller's decision not to sample is kept: a new span id with flags 00, nothing exported", async () => {
    const traceId = newTraceId();
    const response = await invoke('tr-env', `00-${traceId}-${newSpanId()}-00`);
    const echoed = response.headers.get('traceparent') ?? '';
    assert.match(echoed, new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
    assert.equal(await response.text(), echoed, 'the sandbox is told too');
    // A later sampled request's spans arrive; by then the unsampled one's would have too (one exporter, in order).
    const later = newTraceId();
    await (await invoke('tr-env', `00-${later}-${newSpanId()}-01`)).text();
    await receiver.trace(later, ['POST /v1/functions/:name/invoke', 'record'], 'the sampled request after it');
    assert.deepEqual(receiver.spans.filter((span) => span.traceId === traceId), []);
  });

  it('probes are not traced; an untraced caller starts a new trace', async () => {
    const before = receiver.spans.length;
    const health = await fetch(`${server.url}/healthz`);
    const healthTrace = (health.headers.get('traceparent') ?? '').split('-')[1]!;
    const list = await fetch(`${server.url}/v1/functions`, { headers: auth });
    const listTrace = (list.headers.get('traceparent') ?? '').split('-')[1]!;
    const spans = await receiver.trace(listTrace, ['GET /v1/functions'], 'list');
    assert.equal(spans[0]!.parentSpanId ?? '', '', 'a new trace: no parent');
    assert.ok(receiver.spans.slice(before).every((span) => span.traceId !== healthTrace), '/healthz made no span');
  });

  it("a request with an Upgrade header but no upgrade is an ordinary exchange: its span ends with the response, not with the kept-alive connection", async () => {
    // Ending such spans on the socket's close kept every request of a keep-alive client (and its span) in memory.
    const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    try {
      const traceparents: string[] = [];
      for (let i = 0; i < 2; i++) {
        const { headers } = await new Promise<IncomingMessage>((resolve, reject) => {
          const request = httpRequest(`${server.url}/v1/functions`, { agent, headers: { ...auth, upgrade: 'not-a-protocol' } }, (response) => {
            response.resume();
            response.once('end', () => resolve(response));
          });
          request.once('error', reject);
          request.end();
        });
        traceparents.push(String(headers.traceparent));
      }
      // The connection is still open (the agent keeps it): the spans must be exported all the same.
      for (const traceparent of traceparents) {
        const spans = await receiver.trace(traceparent.split('-')[1]!, ['GET /v1/functions'], 'a request with an Upgrade header');
        assert.equal(spans.find((span) => span.name === 'GET /v1/functions')!.attrs['http.response.status_code'], 200);
      }
    } finally {
      agent.destroy();
    }
  });
});

describe('tracing: a platform error', { skip: unavailable ?? false }, () => {
  it('a sandbox that cannot start: error status and code on the request and the phase it failed in', async () => {
    const receiver = new Receiver();
    await receiver.start();
    // No warm sandbox starts within 1 ms: every cold start of a handler fails with SANDBOX_START_TIMEOUT (503).
    const server = await startTestServer({ executor: 'sandbox', adminKey: KEY, otlp: { url: `${receiver.url}/v1/traces`, batchDelayMs: 50 }, functionPools: { startTimeoutMs: 1 } });
    try {
      const put = await fetch(`${server.url}/v1/functions/tr-nostart`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return body\n' }) });
      assert.equal(put.status, 201, await put.text());
      const traceId = newTraceId();
      const response = await fetch(`${server.url}/v1/functions/tr-nostart/invoke`, { method: 'POST', headers: { ...auth, traceparent: `00-${traceId}-${newSpanId()}-01` }, body: 'x' });
      assert.equal(response.status, 503);
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'SANDBOX_START_TIMEOUT');
      const spans = await receiver.trace(traceId, ['POST /v1/functions/:name/invoke', 'queue'], 'platform error');
      assert.deepEqual(spans.map((span) => span.name).sort(), ['POST /v1/functions/:name/invoke', 'queue'], 'it never started: no start, run or record');
      const request = spans.find((span) => span.name === 'POST /v1/functions/:name/invoke')!;
      assert.equal(request.status?.code, STATUS_ERROR);
      assert.equal(request.attrs['kindling.error.code'], 'SANDBOX_START_TIMEOUT');
      assert.equal(request.attrs['kindling.outcome'], 'error');
      assert.equal(request.attrs['http.response.status_code'], 503);
      const queue = spans.find((span) => span.name === 'queue')!;
      assert.equal(queue.status?.code, STATUS_ERROR, 'the phase it failed in');
      assert.equal(queue.attrs['kindling.error.code'], 'SANDBOX_START_TIMEOUT');
    } finally {
      await server.stop();
      await receiver.stop();
    }
  });
});

describe('tracing: across a restart', { skip: unavailable ?? false }, () => {
  it('an async invocation accepted before a restart runs after it in the trace of the request that accepted it', async () => {
    const receiver = new Receiver();
    await receiver.start();
    const dataDir = await newDataDir();
    try {
      // A server that never listens: its dispatcher never starts, so what it accepts stays queued in the store.
      const first = await createServer(testServerConfig(dataDir, { executor: 'sandbox', adminKey: KEY }));
      let accepted: string;
      let invocationId: string;
      try {
        const put = await first.app.inject({ method: 'PUT', url: '/v1/functions/tr-later', headers: { ...auth, 'content-type': 'application/json' }, payload: JSON.stringify({ runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' }) });
        assert.equal(put.statusCode, 201, put.body);
        const traceId = newTraceId();
        const response = await first.app.inject({ method: 'POST', url: '/v1/functions/tr-later/invoke', headers: { ...auth, 'x-kindling-async': 'true', traceparent: `00-${traceId}-${newSpanId()}-01` }, payload: 'x' });
        assert.equal(response.statusCode, 202, response.body);
        accepted = String(response.headers.traceparent);
        invocationId = (JSON.parse(response.body) as { invocationId: string }).invocationId;
        assert.equal(first.invocations.get(invocationId).status, 'queued');
      } finally {
        await first.close();
      }
      const second = await startTestServer({ dataDir, executor: 'sandbox', adminKey: KEY, otlp: { url: `${receiver.url}/v1/traces`, batchDelayMs: 50 } });
      try {
        const [, traceId, parentSpanId] = accepted.split('-');
        const spans = await receiver.trace(traceId!, ['invoke tr-later', 'record'], 'the run after the restart');
        const run = spans.find((span) => span.name === 'invoke tr-later')!;
        assert.equal(run.parentSpanId, parentSpanId, "the run's parent is the accepting request's span");
        assert.equal(run.attrs['kindling.invocation.id'], invocationId);
        const output = await fetch(`${second.url}/v1/invocations/${invocationId}/output`, { headers: auth });
        assert.equal(await output.text(), traceparentOf(run));
      } finally {
        await second.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
      await receiver.stop();
    }
  });
});

describe('tracing: without --otlp-endpoint', { skip: unavailable ?? false }, () => {
  it("an async invocation's sandbox still runs under the accepting request's traceparent", async () => {
    const server = await startTestServer({ executor: 'sandbox', adminKey: KEY });
    try {
      const put = await fetch(`${server.url}/v1/functions/tr-plain`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'bash', code: 'printf "%s" "$TRACEPARENT"' }) });
      assert.equal(put.status, 201, await put.text());
      const traceId = newTraceId();
      const response = await fetch(`${server.url}/v1/functions/tr-plain/invoke`, { method: 'POST', headers: { ...auth, 'x-kindling-async': 'true', traceparent: `00-${traceId}-${newSpanId()}-01` }, body: 'x' });
      assert.equal(response.status, 202);
      const accepted = response.headers.get('traceparent') ?? '';
      assert.match(accepted, new RegExp(`^00-${traceId}-`));
      const { invocationId } = (await response.json()) as { invocationId: string };
      await waitFor(async () => ((await (await fetch(`${server.url}/v1/invocations/${invocationId}`, { headers: auth })).json()) as { status: string }).status === 'succeeded', 30_000, 'the async run');
      const output = await fetch(`${server.url}/v1/invocations/${invocationId}/output`, { headers: auth });
      assert.equal(await output.text(), accepted);
    } finally {
      await server.stop();
    }
  });
});
