/**
 * GET /readyz without the admin key says only ready or not and why, in the server's own words: no host paths (images
 * dir, data dir, cgroups), no uid, no versions. The admin key (or open local mode) sees each executor's findings.
 * `kindling status` works either way. Real server on the sandbox executor.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { IMAGES_DIR, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const ADMIN_KEY = 'readyz-admin-key-0123456789';
const CLI = fileURLToPath(new URL('../../bin/kindling.js', import.meta.url));

interface Ready {
  status: string;
  reasons: string[];
  defaultExecutor: string;
  defaultExecutorReason?: string;
  draining: boolean;
  executors: { name: string; ready: boolean; reason?: string; details?: unknown }[];
}

async function readyz(url: string, key?: string): Promise<{ status: number; text: string; body: Ready }> {
  const response = await fetch(`${url}/readyz`, { headers: key === undefined ? {} : { authorization: `Bearer ${key}` } });
  const text = await response.text();
  return { status: response.status, text, body: JSON.parse(text) as Ready };
}

/** `kindling status` against `url`, with `key` as KINDLING_API_KEY when given. */
async function cliStatus(url: string, key?: string): Promise<{ code: number; body: Ready }> {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, KINDLING_URL: url, ...(key === undefined ? {} : { KINDLING_API_KEY: key }) };
  const run = await promisify(execFile)(process.execPath, [CLI, 'status'], { env }).then(
    (done) => ({ code: 0, stdout: done.stdout }),
    (error: { code?: number; stdout?: string }) => ({ code: error.code ?? -1, stdout: error.stdout ?? '' }),
  );
  return { code: run.code, body: JSON.parse(run.stdout) as Ready };
}

describe('/readyz detail (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let tenantKey: string;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN_KEY });
    const created = await fetch(`${server.url}/v1/tenants`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'acme' }) });
    assert.equal(created.status, 201);
    tenantKey = ((await created.json()) as { apiKey: string }).apiKey;
  });
  after(async () => {
    await server?.stop();
  });

  it('without the admin key: ready and why, no paths, uids or versions', async () => {
    for (const key of [undefined, tenantKey, 'not-a-key']) {
      const { status, text, body } = await readyz(server.url, key);
      assert.equal(status, 200, text);
      assert.deepEqual(Object.keys(body).sort(), ['defaultExecutor', 'draining', 'executors', 'reasons', 'status']);
      assert.equal(body.status, 'ready');
      assert.deepEqual(body.reasons, []);
      assert.deepEqual(body.executors, [{ name: 'sandbox', ready: true }]);
      for (const secret of [IMAGES_DIR, server.dataDir, '/sys/fs/cgroup', 'cgroup', 'uid', 'bubblewrap', '/']) {
        assert.equal(text.includes(secret), false, `the public /readyz shows "${secret}": ${text}`);
      }
    }
  });

  it('with the admin key: every executor with its findings', async () => {
    const { status, body } = await readyz(server.url, ADMIN_KEY);
    assert.equal(status, 200);
    assert.equal(body.status, 'ready');
    assert.equal(typeof body.defaultExecutorReason, 'string');
    const sandbox = body.executors.find((executor) => executor.name === 'sandbox');
    assert.match(sandbox?.reason ?? '', /bubblewrap/);
  });

  it('kindling status works with and without the admin key', async () => {
    const anonymous = await cliStatus(server.url);
    assert.equal(anonymous.code, 0);
    assert.equal(anonymous.body.status, 'ready');
    assert.deepEqual(anonymous.body.executors, [{ name: 'sandbox', ready: true }]);
    const admin = await cliStatus(server.url, ADMIN_KEY);
    assert.equal(admin.code, 0);
    assert.match(admin.body.executors[0]?.reason ?? '', /bubblewrap/);
  });
});

describe('/readyz in open local mode (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
  });
  after(async () => {
    await server?.stop();
  });

  it('shows the detail to the loopback client (every request acts as the admin there)', async () => {
    const { status, body } = await readyz(server.url);
    assert.equal(status, 200);
    assert.match(body.executors.find((executor) => executor.name === 'sandbox')?.reason ?? '', /bubblewrap/);
  });
});
