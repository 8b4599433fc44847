/**
 * The SDK's and the CLI's tenant and key commands against a real server (sandbox executor): create (admin key shown
 * once in open local mode), list, update quotas, keys create/list/revoke, typed errors (403, 409, 401, 429).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { AuthenticationError, ConflictError, Kindling, NotFoundError, PermissionDeniedError, RateLimitError } from '@kindling/sdk';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const sandboxMissing = await sandboxUnavailableReason();
const execFileAsync = promisify(execFile);
const CLI = new URL('../src/main.js', import.meta.url).pathname;

/** Runs the CLI with a clean environment (no key of the caller leaks in); resolves with stdout/stderr/exit code. */
async function cli(args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync('node', [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const failed = error as { stdout: string; stderr: string; code: number };
    return { stdout: failed.stdout, stderr: failed.stderr, code: failed.code };
  }
}

describe('tenants through the SDK and the CLI', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
  });
  after(async () => {
    await server.stop();
  });

  it('SDK: open mode hands out the admin key with the first tenant; admin methods and typed errors', async () => {
    const open = new Kindling({ url: server.url });
    const created = await open.tenants.create('sdk-a', { quotas: { maxConcurrency: 3 } });
    assert.ok(created.adminKey, 'open local mode: the admin key comes with the first tenant');
    assert.equal(created.effectiveQuotas.maxConcurrency, 3);
    await assert.rejects(open.functions.list(), AuthenticationError, 'auth is on now');

    const admin = new Kindling({ url: server.url, apiKey: created.adminKey! });
    const tenantA = new Kindling({ url: server.url, apiKey: created.apiKey });
    assert.deepEqual((await admin.tenants.list()).map((t) => t.name), ['default', 'sdk-a']);
    await assert.rejects(admin.tenants.create('sdk-a'), ConflictError);
    await assert.rejects(tenantA.tenants.list(), PermissionDeniedError);
    await assert.rejects(admin.tenants.get('nope'), NotFoundError);
    assert.equal((await tenantA.tenants.me()).name, 'sdk-a');

    const updated = await admin.tenants.update('sdk-a', { maxConcurrency: null, requestsPerSecond: 1, burst: 1 });
    assert.equal(updated.effectiveQuotas.maxConcurrency, null, 'null puts it back to the server default');
    assert.equal(updated.quotas.requestsPerSecond, 1);
    await tenantA.functions.list();
    const limited = await tenantA.functions.list().then(() => null, (error: unknown) => error);
    assert.ok(limited instanceof RateLimitError, String(limited));
    assert.ok((limited.retryAfterMs ?? 0) >= 1000, 'Retry-After reaches the SDK');
    await admin.tenants.update('sdk-a', { requestsPerSecond: null, burst: null });

    const key = await admin.keys.create('sdk-a');
    assert.ok(key.apiKey.startsWith(key.prefix));
    const keys = await admin.keys.list('sdk-a');
    assert.equal(keys.length, 2);
    assert.ok(keys.every((k) => !('apiKey' in k)));
    const second = new Kindling({ url: server.url, apiKey: key.apiKey });
    assert.equal((await second.tenants.me()).name, 'sdk-a');
    await admin.keys.revoke('sdk-a', key.id);
    await assert.rejects(second.tenants.me(), AuthenticationError);

    // The admin acting as a tenant (the `tenant` option) sees that tenant's functions.
    await tenantA.functions.deploy('only-a', { image: 'kindling/base', command: ['true'] });
    const asA = new Kindling({ url: server.url, apiKey: created.adminKey!, tenant: 'sdk-a' });
    assert.deepEqual((await asA.functions.list()).map((f) => f.name), ['only-a']);
    assert.deepEqual((await admin.functions.list()).map((f) => f.name), [], 'the admin itself is tenant default');

    await admin.tenants.delete('sdk-a');
    await assert.rejects(tenantA.tenants.me(), AuthenticationError);
  });

  it('CLI without a key once the server has keys: UNAUTHORIZED on stderr, exit code 2', async () => {
    const refused = await cli(['tenants', 'list', '--url', server.url]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /UNAUTHORIZED/);
  });
});

describe('tenant CLI commands (env admin key)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  const ADMIN = 'cli-admin-key-0123456789abcdef';
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN });
  });
  after(async () => {
    await server.stop();
  });

  it('creates, lists, updates, deletes tenants and manages keys', async () => {
    const url = ['--url', server.url];
    const env = { KINDLING_API_KEY: ADMIN };
    const created = await cli(['tenants', 'create', 'cli-a', '--max-concurrency', '2', '--rps', '50', ...url], env);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /created tenant cli-a \(.*maxConcurrency=2.*requestsPerSecond=50/);
    const key = /api key \(shown only now\): (kdl_\S+)/.exec(created.stdout)?.[1];
    assert.ok(key, created.stdout);

    const listed = await cli(['tenants', 'list', '--api-key', ADMIN, ...url]);
    assert.match(listed.stdout, /^cli-a\s/m);
    assert.match(listed.stdout, /^default\s/m);

    const me = await cli(['tenants', 'me', ...url], { KINDLING_API_KEY: key });
    assert.equal(JSON.parse(me.stdout).name, 'cli-a');
    const forbidden = await cli(['tenants', 'list', ...url], { KINDLING_API_KEY: key });
    assert.equal(forbidden.code, 2);
    assert.match(forbidden.stderr, /FORBIDDEN/);

    const updated = await cli(['tenants', 'update', 'cli-a', '--max-memory-mb', '128', '--reset', 'requestsPerSecond', ...url], env);
    assert.equal(updated.code, 0, updated.stderr);
    assert.match(updated.stdout, /maxMemoryMb=128/);
    assert.doesNotMatch(updated.stdout, /requestsPerSecond/);

    const made = await cli(['keys', 'create', 'cli-a', '--json', ...url], env);
    const second = JSON.parse(made.stdout) as { id: string; apiKey: string };
    const keys = await cli(['keys', 'list', 'cli-a', ...url], env);
    assert.equal(keys.stdout.trim().split('\n').length, 2);
    assert.ok(!keys.stdout.includes(second.apiKey), 'a listing never shows a key');
    assert.match(keys.stdout, new RegExp(`^${second.id}\\s.*active`, 'm'));
    assert.equal((await cli(['keys', 'revoke', 'cli-a', second.id, ...url], env)).code, 0);
    assert.match((await cli(['keys', 'list', 'cli-a', ...url], env)).stdout, new RegExp(`^${second.id}\\s.*revoked`, 'm'));
    const revoked = await cli(['tenants', 'me', ...url], { KINDLING_API_KEY: second.apiKey });
    assert.equal(revoked.code, 2);
    assert.match(revoked.stderr, /UNAUTHORIZED/);

    // A tenant's deploy through the CLI lands in its own tenant; the admin sees it with --tenant.
    assert.equal((await cli(['deploy', 'hello', '--image', 'kindling/base', ...url, '--', 'echo', 'hi'], { KINDLING_API_KEY: key })).code, 0);
    const asTenant = await cli(['functions', 'list', '--tenant', 'cli-a', ...url], env);
    assert.match(asTenant.stdout, /hello/);
    const asDefault = await cli(['functions', 'list', ...url], env);
    assert.doesNotMatch(asDefault.stdout, /hello/);

    // kindling run --open-files, capped by the tenant's quota (maxOpenFiles from the update below).
    assert.equal((await cli(['tenants', 'update', 'cli-a', '--max-open-files', '100', ...url], env)).code, 0);
    const ran = await cli(['run', '--image', 'kindling/base', '--open-files', '64', ...url, '--no-stdin', '--', 'sh', '-c', 'ulimit -n'], { KINDLING_API_KEY: key });
    assert.equal(ran.stdout, '64\n', ran.stderr);
    const over = await cli(['run', '--image', 'kindling/base', '--open-files', '200', ...url, '--no-stdin', '--', 'true'], { KINDLING_API_KEY: key });
    assert.equal(over.code, 2);
    assert.match(over.stderr, /TENANT_LIMIT_EXCEEDED/);
    assert.equal((await cli(['tenants', 'delete', 'cli-a', ...url], env)).code, 0);
    assert.equal((await cli(['tenants', 'me', ...url], { KINDLING_API_KEY: key })).code, 2);
  });
});

describe('kindling serve on a non-loopback address, first start', { skip: sandboxMissing ?? false }, () => {
  it('prints the generated admin key once as a stderr banner, never into the JSON log, and stores only its hash', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'kindling-serve-key-'));
    const child = spawn(process.execPath, [CLI, 'serve', '--host', '0.0.0.0', '--port', '0', '--data-dir', dataDir, '--executor', 'sandbox', '--prewarm', '0', '--generic-sandboxes', '0'], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const lines = createInterface({ input: child.stdout });
        lines.on('line', (line) => {
          stdout += `${line}\n`;
          const entry = JSON.parse(line) as { msg?: string; url?: string };
          if (entry.msg === 'Kindling is listening' && entry.url) resolve(entry.url.replace('0.0.0.0', '127.0.0.1'));
        });
        child.once('exit', (code) => reject(new Error(`serve exited (${code}): ${stderr}`)));
      });
      const key = /export KINDLING_API_KEY=(kdl_[A-Za-z0-9_-]{43})/.exec(stderr)?.[1];
      assert.ok(key, `no banner on stderr: ${stderr}`);
      assert.equal(stderr.split(key).length - 1, 1, 'shown exactly once');
      const me = await cli(['tenants', 'me', '--url', url], { KINDLING_API_KEY: key });
      assert.equal(JSON.parse(me.stdout).admin, true);
      assert.equal((await cli(['tenants', 'me', '--url', url])).code, 2, 'no key: refused');
      assert.ok(!stdout.includes(key), 'the JSON log never carries the key');
      const files = await readdir(dataDir, { recursive: true, withFileTypes: true });
      for (const file of files.filter((f) => f.isFile())) {
        assert.ok(!(await readFile(join(file.parentPath, file.name)).catch(() => Buffer.alloc(0))).includes(key), `${file.name} holds the key`);
      }
    } finally {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
      await rm(dataDir, { recursive: true, force: true });
    }
    assert.ok(!stdout.includes('kdl_'), 'no key prefix anywhere in the log, shutdown included');
  });
});
