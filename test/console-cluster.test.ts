/**
 * The console's Cluster section in headless Chromium, against a gateway with a worker (real nats-server, real server
 * processes): the admin sees this node and the worker with its warm function version; a tenant key does not see the
 * section. Skips only when chromium or nats-server is missing (scripts/setup.sh installs both); in CI that fails.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { skipOrFail } from '../src/executors/test-support.js';
import { startNode } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const CHROMIUM = '/usr/bin/chromium';
const KEY = 'console-cluster-key';
const unavailable = (existsSync(CHROMIUM) ? null : skipOrFail('chromium', `${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)`)) ?? (natsUnavailable || null) ?? (await sandboxUnavailableReason());

describe('console: the Cluster section', { skip: unavailable ?? false }, () => {
  it("shows the admin this gateway and its worker with the function it keeps warm; a tenant key sees no section", { timeout: 120_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const gateway = await startNode(t, natsUrl, 'gateway', 'gw-1', undefined, { KINDLING_ADMIN_KEY: KEY });
    await startNode(t, natsUrl, 'worker', 'wk-a');
    const auth = { authorization: `Bearer ${KEY}` };
    await waitFor(async () => (await fetch(`${gateway.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the gateway to see the worker' });
    const deployed = await fetch(`${gateway.url}/v1/functions/shown`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', handler: 'handler', code: 'exports.handler = async () => "ok"' }) });
    assert.equal(deployed.status, 201);
    assert.equal((await fetch(`${gateway.url}/v1/functions/shown/invoke`, { method: 'POST', headers: auth, body: 'x' })).headers.get('x-kindling-node'), 'wk-a');
    const tenant = (await (await fetch(`${gateway.url}/v1/tenants`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'cluster-viewer' }) })).json()) as { apiKey: string };

    const browserServer = await chromium.launchServer({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
    t.after(async () => {
      await browserServer.close().catch(() => undefined);
      const pid = browserServer.process().pid;
      if (pid !== undefined) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    });
    const browser = await chromium.connect(browserServer.wsEndpoint());
    t.after(() => browser.close().catch(() => undefined));
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(gateway.url);
    await page.getByLabel('API key').fill(KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Cluster' }).waitFor({ timeout: 15_000 });
    await page.locator('#cluster-node').filter({ hasText: 'gw-1 (gateway), NATS connected' }).waitFor();
    // The worker's next heartbeat (every 5 s) lists the version it keeps warm.
    const workerRow = page.locator('#cluster-body tr').filter({ hasText: 'wk-a' });
    await workerRow.filter({ hasText: 'default/shown@1' }).waitFor({ timeout: 30_000 });
    assert.match((await workerRow.textContent()) ?? '', /worker\s*32/);
    assert.equal(await page.getByRole('link', { name: 'Cluster' }).isVisible(), true);

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').fill(tenant.apiKey);
    await page.keyboard.press('Enter');
    await page.locator('#whoami').filter({ hasText: 'Tenant cluster-viewer' }).waitFor();
    await page.getByRole('heading', { name: 'Functions' }).waitFor();
    assert.equal(await page.locator('#cluster').isHidden(), true, "the workers' load is the operator's, not a tenant's");
    assert.equal(await page.locator('#cluster-body').textContent(), '');
  });
});
