/**
 * Builds are bounded (issue 21, deploys that do not wait): a tenant runs at most its quota maxConcurrentBuilds at
 * once (beyond: 429 TENANT_BUILD_LIMIT, nothing stored), the server at most --max-concurrent-builds (beyond: a FIFO
 * queue, then they run), and builds count as `_build` in metrics, not as one-off executions. Against a real server
 * (sandbox executor) whose python builds install from the gated local index of test/helpers/gated-index.ts, so that
 * "a build is running" is held by the test. Skips with the reason when bwrap or Docker is missing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling, KindlingError, type DeployAccepted, type FunctionInfo } from '@kindling/sdk';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { startGatedIndex, type GatedIndex } from './helpers/gated-index.js';
import { waitFor } from './helpers/wait.js';

const missing = (await sandboxUnavailableReason()) ?? (await dockerUnavailableReason());
const work = mkdtempSync(join(tmpdir(), 'kindling-build-quota-'));
chmodSync(work, 0o755);
after(() => rmSync(work, { recursive: true, force: true }));

const GATED = ['kgatequa'];
const SPEC = { runtime: 'python', handler: 'handler.py:main' };
const isAccepted = (answer: FunctionInfo | DeployAccepted): answer is DeployAccepted => 'build' in answer && answer.status === 'building';

/** A bundle (tar) whose handler greets with the python module `module`, installed from requirements.txt. */
function bundleOf(module: string): Buffer {
  const dir = mkdtempSync(join(work, 'dir-'));
  writeFileSync(join(dir, 'handler.py'), `import ${module}\n\ndef main(body):\n    return ${module}.greet(body.decode())\n`);
  writeFileSync(join(dir, 'requirements.txt'), `${module}==1.0.0\n`);
  return execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
}

describe('bounded builds: per-tenant cap, server queue, their own metrics label (sandbox executor, a local package index)', { skip: missing ?? false }, () => {
  let index: GatedIndex;
  let server: TestServer;

  before(async () => {
    index = await startGatedIndex(work, { kgreetq: 'hello', kgreetqb: 'second', kgatequa: 'first' }, 'build-quota-index');
    // One build slot on the server: the second tenant's build has to queue behind the first's.
    server = await startTestServer({ executor: 'sandbox', egressAllow: [`${index.ip}/32`], build: { pipIndexUrl: index.url, maxConcurrent: 1 } });
  });
  after(async () => {
    // Every gate opens, so that no build (nor the index's threads) waits on one.
    await index?.stop(GATED);
    await server?.stop();
  });

  it('refuses a tenant at its build cap with 429 TENANT_BUILD_LIMIT, not another tenant, queues beyond the server cap, and runs every build to the end', async () => {
    const open = new Kindling({ url: server.url });
    const createdA = await open.tenants.create('bq-a', { quotas: { maxConcurrentBuilds: 1 } });
    const admin = new Kindling({ url: server.url, apiKey: createdA.adminKey! });
    const createdB = await admin.tenants.create('bq-b');
    const tenantA = new Kindling({ url: server.url, apiKey: createdA.apiKey });
    const tenantB = new Kindling({ url: server.url, apiKey: createdB.apiKey });

    // A's first build holds A's only build slot and the server's only one (the index holds it).
    const first = await tenantA.functions.deployBundle('quota-one', SPEC, bundleOf('kgatequa'), { requestTimeoutMs: 0, wait: false });
    assert.ok(isAccepted(first), JSON.stringify(first));

    // A second build of A is refused at once, waiting or not, and nothing of it is stored.
    const deploys = [
      () => tenantA.functions.deployBundle('quota-two', SPEC, bundleOf('kgreetq'), { requestTimeoutMs: 0, wait: false }),
      () => tenantA.functions.deployBundle('quota-two', SPEC, bundleOf('kgreetq'), { requestTimeoutMs: 0 }),
    ];
    for (const deploy of deploys) {
      const refused = await deploy().then(
        (answer) => assert.fail(`a deploy over the build quota was taken: ${JSON.stringify(answer)}`),
        (error: unknown) => error as KindlingError,
      );
      assert.equal(refused.status, 429, `${refused.code}: ${refused.message}`);
      assert.equal(refused.code, 'TENANT_BUILD_LIMIT');
      assert.match(refused.message, /maxConcurrentBuilds 1/);
      assert.ok(refused.retryAfterMs !== undefined && refused.retryAfterMs > 0, 'the 429 carries Retry-After');
    }
    await assert.rejects(tenantA.functions.get('quota-two'), (error: KindlingError) => error.code === 'FUNCTION_NOT_FOUND');
    assert.deepEqual(await tenantA.functions.builds('quota-two'), []);

    // B is not refused: its build is accepted and waits for the server's only build slot.
    const other = await tenantB.functions.deployBundle('quota-other', SPEC, bundleOf('kgreetqb'), { requestTimeoutMs: 0, wait: false });
    assert.ok(isAccepted(other), JSON.stringify(other));
    await waitFor(async () => /waiting for a build slot/.test((await tenantB.functions.buildLogs('quota-other', other.build.id)).log), { what: "B's build to wait for a build slot" });

    // A's build ends (the index lets it go) and its version serves; then B's build runs and ends too (its index page
    // is not held: it only waited for the slot).
    index.release('kgatequa');
    await waitFor(async () => (await tenantA.functions.build('quota-one', first.build.id)).status !== 'building', { what: "A's build to end", timeoutMs: 120_000 });
    const builtA = await tenantA.functions.build('quota-one', first.build.id);
    assert.equal(builtA.status, 'ready', `${JSON.stringify(builtA)}\n${(await tenantA.functions.buildLogs('quota-one', first.build.id)).log}`);
    assert.equal((await tenantA.functions.invoke('quota-one', 'a')).text(), 'first a');
    // A's cap is free again: its next deploy with dependencies is taken.
    const again = await tenantA.functions.deployBundle('quota-two', SPEC, bundleOf('kgreetq'), { requestTimeoutMs: 0 });
    assert.ok(!isAccepted(again) && again.version === 1, JSON.stringify(again));

    await waitFor(async () => (await tenantB.functions.build('quota-other', other.build.id)).status !== 'building', { what: "B's build to end", timeoutMs: 120_000 });
    const builtB = await tenantB.functions.build('quota-other', other.build.id);
    assert.equal(builtB.status, 'ready', JSON.stringify(builtB));
    assert.equal((await tenantB.functions.invoke('quota-other', 'b')).text(), 'second b');

    // Builds are counted under their own label, not as one-off executions.
    const metrics = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${createdA.adminKey!}` } })).text();
    assert.match(metrics, /kindling_invocations_total\{[^}]*tenant="bq-a"[^}]*function="_build"/);
    assert.match(metrics, /kindling_invocations_total\{[^}]*tenant="bq-b"[^}]*function="_build"/);
    assert.doesNotMatch(metrics, /function="_execute"/);
  });
});
