/**
 * Per-tenant storage quotas against a real server on the sandbox executor: function versions kept, bytes of code, and
 * bytes of queued async payloads. A tenant at a quota gets 409 TENANT_STORAGE_LIMIT before anything is stored; another
 * tenant deploys and enqueues on. Retention deletes old versions on deploy, never one a queued invocation needs. The
 * usage shows in GET /v1/tenant (next to the quotas) and in /metrics.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ConflictError, Kindling } from '@kindling/sdk';
import { series } from './helpers/prom-text.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const sandboxMissing = await sandboxUnavailableReason();
const CLI = new URL('../src/main.js', import.meta.url).pathname;

/** Runs the CLI with a clean environment; resolves with stdout/stderr/exit code. */
async function cli(args: string[], env: Record<string, string>): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('node', [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const failed = error as { stdout: string; stderr: string; code: number };
    return { stdout: failed.stdout, stderr: failed.stderr, code: failed.code };
  }
}

interface Answer {
  status: number;
  body: Record<string, unknown> & { error?: { code: string; message: string; details?: Record<string, unknown> } };
  text: string;
}

describe('tenant storage quotas (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  let adminKey = '';
  const keys: Record<string, string> = {};

  async function call(tenant: string | null, method: string, path: string, body?: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
    const key = tenant === null ? adminKey : keys[tenant]!;
    const response = await fetch(server.url + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined || typeof body === 'string' ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      ...(signal ? { signal } : {}),
    });
    const text = await response.text();
    let parsed: Answer['body'] = {};
    try {
      parsed = JSON.parse(text) as Answer['body'];
    } catch {
      // raw output
    }
    return { status: response.status, body: parsed, text };
  }
  const deploy = (tenant: string, name: string, spec: Record<string, unknown>): Promise<Answer> => call(tenant, 'PUT', `/v1/functions/${name}`, spec);
  const enqueue = (tenant: string, name: string, payload: string): Promise<Answer> => call(tenant, 'POST', `/v1/functions/${name}/invoke`, payload, { 'x-kindling-async': 'true' });
  const usage = async (tenant: string): Promise<{ usage: { functionVersions: number; codeBytes: number; queuedPayloadBytes: number }; effectiveQuotas: Record<string, number | null> }> => {
    const me = await call(tenant, 'GET', '/v1/tenant');
    assert.equal(me.status, 200, me.text);
    return me.body as never;
  };
  const finished = async (tenant: string, id: string): Promise<Record<string, unknown>> => {
    let view: Record<string, unknown> = {};
    await waitFor(async () => {
      view = (await call(tenant, 'GET', `/v1/invocations/${id}`)).body;
      return view.status === 'succeeded' || view.status === 'failed';
    }, 60_000, `invocation ${id} to finish`);
    return view;
  };
  const metric = async (name: string, tenant: string): Promise<number | null> => {
    const text = (await call(null, 'GET', '/metrics')).text;
    const values = series(text, name, { tenant });
    return values.length === 1 ? values[0]! : null;
  };
  const refusedFor = (answer: Answer, quota: string): void => {
    assert.equal(answer.status, 409, answer.text);
    assert.equal(answer.body.error?.code, 'TENANT_STORAGE_LIMIT');
    assert.match(answer.body.error!.message, new RegExp(quota));
    assert.equal(answer.body.error?.details?.quota, quota);
  };

  const CAT = { image: 'kindling/base', command: ['sh', '-c', 'wc -c'] };

  before(async () => {
    // Shutdown waits briefly: the test ends with no sandbox running, but a failed one must not hold the run.
    server = await startTestServer({ executor: 'sandbox', functionVersionsKept: 2, shutdownTimeoutMs: 2000 });
    const first = await fetch(`${server.url}/v1/tenants`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'other' }) });
    const made = (await first.json()) as { apiKey: string; adminKey: string };
    adminKey = made.adminKey;
    keys.other = made.apiKey;
    for (const [name, quotas] of Object.entries({
      few: { maxFunctionVersions: 2 },
      small: { maxCodeBytes: 3000 },
      shallow: { maxConcurrency: 1, maxQueuedPayloadBytes: 3000 },
    })) {
      const created = await call(null, 'POST', '/v1/tenants', { name, quotas });
      assert.equal(created.status, 201, created.text);
      keys[name] = created.body.apiKey as string;
    }
  });
  after(async () => {
    await server?.stop();
  });

  it('versions: a tenant at maxFunctionVersions gets 409 TENANT_STORAGE_LIMIT and nothing is stored; another tenant deploys', async () => {
    assert.equal((await deploy('few', 'a', CAT)).status, 201);
    assert.equal((await deploy('few', 'b', CAT)).status, 201);
    refusedFor(await deploy('few', 'c', CAT), 'maxFunctionVersions');
    assert.equal((await call('few', 'GET', '/v1/functions/c')).status, 404);
    const few = await usage('few');
    assert.equal(few.usage.functionVersions, 2);
    assert.equal(few.effectiveQuotas.maxFunctionVersions, 2);
    assert.equal(await metric('kindling_tenant_function_versions', 'few'), 2);
    assert.equal((await deploy('other', 'c', CAT)).status, 201);
    // Freeing space: a deleted function's versions go, and the deploy passes.
    assert.equal((await call('few', 'DELETE', '/v1/functions/a')).status, 204);
    assert.equal((await deploy('few', 'c', CAT)).status, 201);
  });

  it('code bytes: a deploy that would pass maxCodeBytes gets 409; the usage is in GET /v1/tenant and /metrics', async () => {
    const big = { runtime: 'python', code: `print(${'1'.repeat(2000)})` };
    assert.equal((await deploy('small', 'a', big)).status, 201);
    const before = await usage('small');
    assert.ok(before.usage.codeBytes > 2000 && before.usage.codeBytes < 3000, JSON.stringify(before));
    assert.equal(before.effectiveQuotas.maxCodeBytes, 3000);
    refusedFor(await deploy('small', 'b', big), 'maxCodeBytes');
    assert.deepEqual((await usage('small')).usage, before.usage, 'nothing was stored');
    assert.equal(await metric('kindling_tenant_code_bytes', 'small'), before.usage.codeBytes);
    const admin = await call(null, 'GET', '/v1/tenants/small');
    assert.deepEqual(admin.body.usage, before.usage, 'the admin view shows the same usage');
    assert.equal((await deploy('other', 'big', big)).status, 201);
  });

  it('queued payloads: past maxQueuedPayloadBytes 409; retention keeps the version queued invocations run; another tenant enqueues on', async () => {
    // `hold` takes the tenant's only concurrency slot (quota 1) until the test lets it go: its async invocations wait.
    assert.equal((await deploy('shallow', 'hold', { image: 'kindling/base', command: ['sh', '-c', 'sleep 300'], timeoutMs: 300_000 })).status, 201);
    assert.equal((await deploy('shallow', 'f', CAT)).status, 201);
    const release = new AbortController();
    const holding = call('shallow', 'POST', '/v1/functions/hold/invoke', '', {}, release.signal).catch(() => null);
    await waitFor(async () => ((await call('shallow', 'GET', '/v1/tenant')).body.running as number) === 1, 30_000, 'the hold to run');
    const a = await enqueue('shallow', 'f', 'a'.repeat(1000));
    const b = await enqueue('shallow', 'f', 'b'.repeat(1500));
    assert.equal(a.status, 202, a.text);
    assert.equal(b.status, 202, b.text);
    const shallow = await usage('shallow');
    assert.equal(shallow.usage.queuedPayloadBytes, 2500);
    assert.equal(shallow.effectiveQuotas.maxQueuedPayloadBytes, 3000);
    assert.equal(await metric('kindling_tenant_queued_payload_bytes', 'shallow'), 2500);
    refusedFor(await enqueue('shallow', 'f', 'c'.repeat(1000)), 'maxQueuedPayloadBytes');
    assert.equal((await usage('shallow')).usage.queuedPayloadBytes, 2500, 'the refused payload was not stored');
    // Another tenant is unaffected.
    assert.equal((await deploy('other', 'f', CAT)).status, 201);
    const other = await enqueue('other', 'f', 'x'.repeat(5000));
    assert.equal(other.status, 202, other.text);
    assert.equal((await finished('other', other.body.invocationId as string)).status, 'succeeded');

    // Retention (2 kept): v2 goes when v4 is deployed; v1 stays, the queued invocations run it.
    for (let version = 2; version <= 4; version++) assert.equal((await deploy('shallow', 'f', { ...CAT, env: { V: String(version) } })).status, 200);
    assert.equal((await usage('shallow')).usage.functionVersions, 1 + 3, 'hold v1; f v1 (queued), v3, v4');
    assert.equal(await metric('kindling_tenant_function_versions', 'shallow'), 4);
    release.abort();
    await holding;
    const ranA = await finished('shallow', a.body.invocationId as string);
    const ranB = await finished('shallow', b.body.invocationId as string);
    assert.equal(ranA.status, 'succeeded', JSON.stringify(ranA));
    assert.equal(ranA.version, 1);
    assert.equal(ranB.status, 'succeeded', JSON.stringify(ranB));
    assert.equal((await call('shallow', 'GET', `/v1/invocations/${a.body.invocationId as string}/output`)).text.trim(), '1000');
    assert.equal((await usage('shallow')).usage.queuedPayloadBytes, 0);
    assert.equal(await metric('kindling_tenant_queued_payload_bytes', 'shallow'), 0);
    // Nothing needs v1 now: the next deploy removes it with v3.
    assert.equal((await deploy('shallow', 'f', CAT)).status, 200);
    assert.equal((await usage('shallow')).usage.functionVersions, 1 + 2);
  });

  it('CLI and SDK: the storage quota flags, the usage in `tenants list`, ConflictError TENANT_STORAGE_LIMIT', async () => {
    const env = { KINDLING_URL: server.url, KINDLING_API_KEY: adminKey };
    const created = await cli(['tenants', 'create', 'cli-storage', '--max-function-versions', '1', '--max-code-bytes', '100000', '--max-queued-payload-bytes', '5000', '--max-image-bytes', '7000000', '--json'], env);
    assert.equal(created.code, 0, created.stderr);
    const made = JSON.parse(created.stdout) as { apiKey: string; effectiveQuotas: Record<string, number | null> };
    assert.equal(made.effectiveQuotas.maxFunctionVersions, 1);
    assert.equal(made.effectiveQuotas.maxCodeBytes, 100000);
    assert.equal(made.effectiveQuotas.maxQueuedPayloadBytes, 5000);
    assert.equal(made.effectiveQuotas.maxImageBytes, 7000000);
    const sdk = new Kindling({ url: server.url, apiKey: made.apiKey });
    await sdk.functions.deploy('a', CAT);
    const refused = await sdk.functions.deploy('b', CAT).then(() => null, (error: unknown) => error);
    assert.ok(refused instanceof ConflictError, String(refused));
    assert.equal(refused.code, 'TENANT_STORAGE_LIMIT');
    assert.equal(refused.details?.quota, 'maxFunctionVersions');
    const updated = await cli(['tenants', 'update', 'cli-storage', '--max-function-versions', '2'], env);
    assert.equal(updated.code, 0, updated.stderr);
    assert.match(updated.stdout, /maxFunctionVersions=2/);
    await sdk.functions.deploy('b', CAT);
    const listed = await cli(['tenants', 'list'], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^cli-storage .* versions 2\/2 code \d+\/100000 B queued 0\/5000 B images 0\/7000000 B$/m);
  });
});
