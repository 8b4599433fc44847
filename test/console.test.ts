/**
 * The web console in a real browser: Debian's Chromium driven by playwright-core signs in with a key, deploys a
 * function from the page, invokes it, sees the output and the invocation in the list, follows the live logs of a
 * running invocation (a function's row, by keyboard; an async invocation from the invoke form), and saves a screenshot
 * (test-results/console.png). Skips only when /usr/bin/chromium is missing (scripts/setup.sh installs it); in CI it
 * must run.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { chromium, type Browser, type BrowserServer, type Page } from 'playwright-core';
import { DEFAULT_CONSOLE_DIR } from '../src/server.js';
import { skipOrFail } from '../src/executors/test-support.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const CHROMIUM = '/usr/bin/chromium';
const KEY = 'console-test-key';
const RESULTS_DIR = new URL('../../test-results/', import.meta.url).pathname;

function unavailableReason(): string | null {
  if (!existsSync(CHROMIUM)) return skipOrFail('chromium', `${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)`);
  return null;
}
const unavailable = unavailableReason() ?? (await sandboxUnavailableReason());

describe('web console in headless Chromium', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let browserServer: BrowserServer | undefined;
  let browser: Browser | undefined;
  let page: Page;

  before(async () => {
    assert.ok(existsSync(join(DEFAULT_CONSOLE_DIR, 'index.html')), `the console is not built in ${DEFAULT_CONSOLE_DIR}: run "npm run build"`);
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY });
    // A browser server, so that its pid is known and it can be stopped by pid whatever happens; playwright gives it a
    // fresh, empty profile dir.
    browserServer = await chromium.launchServer({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    browser = await chromium.connect(browserServer.wsEndpoint());
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await browserServer?.close().catch(() => undefined);
    const pid = browserServer?.process().pid;
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await server?.stop();
  });

  it('ships less than 300 KB of JavaScript (gzipped)', () => {
    const assets = join(DEFAULT_CONSOLE_DIR, 'assets');
    const js = readdirSync(assets).filter((file) => file.endsWith('.js'));
    assert.ok(js.length > 0);
    const gzipped = js.reduce((sum, file) => sum + gzipSync(readFileSync(join(assets, file))).length, 0);
    assert.ok(gzipped < 300 * 1024, `${gzipped} bytes of gzipped JS`);
  });

  it('signs in with the keyboard, deploys, invokes, lists the invocation; saves a screenshot', async () => {
    await page.goto(server.url);
    // The key field has focus and a label; a wrong key is refused with the server's message.
    await page.getByLabel('API key').waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'api-key');
    await page.keyboard.type('wrong-key');
    await page.keyboard.press('Enter');
    await page.getByRole('alert').filter({ hasText: 'UNAUTHORIZED' }).waitFor();
    await page.getByLabel('API key').fill(KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Functions' }).waitFor();

    // Deploy a program from the page's editor.
    await page.getByLabel('Name').fill('console-hello');
    await page.getByLabel('Runtime').selectOption('python');
    await page.getByLabel('Code').fill('import sys\nprint("hello, " + sys.stdin.read())\n');
    await page.getByRole('button', { name: 'Deploy' }).click();
    await page.getByText('Deployed console-hello version 1.').waitFor({ timeout: 30_000 });
    await page.locator('#functions-body').getByText('console-hello').waitFor();

    // Invoke it with a payload and see the output.
    await page.getByLabel('Function', { exact: true }).selectOption('console-hello');
    await page.getByLabel('Payload').fill('browser');
    await page.getByRole('button', { name: 'Invoke' }).click();
    await page.locator('#invoke-output').filter({ hasText: 'hello, browser' }).waitFor({ timeout: 60_000 });
    const meta = (await page.locator('#invoke-meta').textContent()) ?? '';
    const id = /Invocation (ex_\S+|inv_\S+):/.exec(meta)?.[1];
    assert.ok(id, `no invocation id in "${meta}"`);
    assert.match(meta, /exit code 0/);

    // The invocation shows up in the list with its status, start kind and executor.
    const listed = page.locator('#invocations-body tr').filter({ hasText: id });
    await listed.waitFor({ timeout: 15_000 });
    const text = (await listed.textContent()) ?? '';
    assert.match(text, /console-hello/);
    assert.match(text, /succeeded/);
    assert.match(text, /sandbox/);
    assert.match(text, /cold|warm/);
    await page.locator('#usage-body').getByText('console-hello').waitFor({ timeout: 15_000 });
    await page.locator('#chart-rate svg').waitFor();

    // Live logs: a command function that prints a line, sleeps, prints another.
    await page.getByLabel('Name').fill('console-tail');
    await page.getByLabel('Runtime').selectOption('bash');
    await page.getByLabel('Code').fill('echo "first line"\nsleep 2\necho "second line"\n');
    await page.getByRole('button', { name: 'Deploy' }).click();
    await page.getByText('Deployed console-tail version 1.').waitFor({ timeout: 30_000 });
    const panel = page.locator('#logs-output');
    const status = page.locator('#logs-status');

    // From the function's row, by keyboard: follow its logs, then a synchronous invocation streams into the panel.
    const followButton = page.getByRole('button', { name: 'Follow the logs of console-tail' });
    await followButton.focus();
    await page.keyboard.press('Enter');
    await status.filter({ hasText: 'Following the logs of console-tail live' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'logs-output');
    let syncDone = false;
    const sync = fetch(`${server.url}/v1/functions/console-tail/invoke`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` } }).then(async (response) => {
      const text = await response.text();
      syncDone = true;
      return text;
    });
    await panel.filter({ hasText: 'first line' }).waitFor({ timeout: 30_000 });
    assert.equal(syncDone, false, 'the first line showed only after the invocation finished');
    assert.doesNotMatch((await panel.textContent()) ?? '', /second line/);
    await panel.filter({ hasText: 'second line' }).waitFor({ timeout: 30_000 });
    assert.equal(await sync, 'first line\nsecond line\n');
    // Escape in the panel stops following.
    await panel.focus();
    await page.keyboard.press('Escape');
    await status.filter({ hasText: 'Stopped following the logs of console-tail' }).waitFor();
    assert.equal(await page.getByRole('button', { name: 'Stop following' }).isDisabled(), true);

    // An asynchronous invocation from the invoke form: its own log stream, live, then its output.
    await page.getByLabel('Function', { exact: true }).selectOption('console-tail');
    await page.getByLabel('Run asynchronously').check();
    await page.getByRole('button', { name: 'Invoke' }).click();
    await panel.filter({ hasText: 'first line' }).waitFor({ timeout: 30_000 });
    const asyncMeta = (await page.locator('#invoke-meta').textContent()) ?? '';
    const asyncId = /Invocation (inv_\S+) is running/.exec(asyncMeta)?.[1];
    assert.ok(asyncId, `no running invocation in "${asyncMeta}"`);
    assert.doesNotMatch((await panel.textContent()) ?? '', /second line/);
    assert.doesNotMatch((await status.textContent()) ?? '', /Finished/);
    const running = (await (await fetch(`${server.url}/v1/invocations/${asyncId}`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as { status: string };
    assert.equal(running.status, 'running');
    await panel.filter({ hasText: 'second line' }).waitFor({ timeout: 30_000 });
    await status.filter({ hasText: `Finished: invocation ${asyncId} succeeded, exit code 0` }).waitFor({ timeout: 30_000 });
    await page.locator('#invoke-output').filter({ hasText: 'second line' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.locator('#invoke-output').textContent(), 'first line\nsecond line\n');
    await page.getByLabel('Run asynchronously').uncheck();

    await mkdir(RESULTS_DIR, { recursive: true });
    await page.screenshot({ path: join(RESULTS_DIR, 'console.png'), fullPage: true });
  });

  it('a tenant key signs in and sees only its own tenant: functions, invocations, usage, pools', async () => {
    const created = (await (await fetch(`${server.url}/v1/tenants`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'console-tenant' }) })).json()) as { apiKey: string };
    const tenantKey = created.apiKey;
    const own = await fetch(`${server.url}/v1/functions/tenant-fn`, { method: 'PUT', headers: { authorization: `Bearer ${tenantKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', code: 'export const handler = (b) => "t:" + b;', handler: 'handler' }) });
    assert.equal(own.status, 201);
    assert.equal(await (await fetch(`${server.url}/v1/functions/tenant-fn/invoke`, { method: 'POST', headers: { authorization: `Bearer ${tenantKey}` }, body: 'x' })).text(), 't:x');

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').fill(tenantKey);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Functions' }).waitFor();
    await page.locator('#whoami').filter({ hasText: 'Tenant console-tenant' }).waitFor();
    await page.locator('#functions-body').getByText('tenant-fn').waitFor({ timeout: 15_000 });
    await page.locator('#invocations-body').getByText('tenant-fn').waitFor({ timeout: 15_000 });
    await page.locator('#usage-body').getByText('tenant-fn').waitFor({ timeout: 15_000 });
    await page.locator('#pools-body').getByText('tenant-fn').waitFor({ timeout: 15_000 });
    await page.locator('#pools-capacity').filter({ hasText: 'admin only' }).waitFor();
    // Nothing of the admin's tenant (default) shows anywhere on the page.
    const text = (await page.locator('#app').textContent()) ?? '';
    for (const other of ['console-hello', 'console-tail']) assert.ok(!text.includes(other), `${other} is another tenant's and must not show`);
    await page.getByRole('button', { name: 'Sign out' }).click();
  });

  it("lists the tenant's custom images: building, then failed with the build's error", async () => {
    const name = `console-img-${process.pid}`;
    const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const created = await fetch(`${server.url}/v1/images/${name}`, { method: 'PUT', headers, body: JSON.stringify({ from: 'base', apt: ['kindling-console-no-such-package'] }) });
    assert.equal(created.status, 202);
    try {
      await page.goto(server.url);
      await page.getByLabel('API key').fill(KEY);
      await page.keyboard.press('Enter');
      await page.getByRole('heading', { name: 'Custom images' }).waitFor();
      const imageRow = page.locator('#images-body tr').filter({ hasText: `kindling/${name}` });
      await imageRow.waitFor({ timeout: 15_000 });
      assert.match((await imageRow.textContent()) ?? '', /kindling-console-no-such-package/);
      // The build fails (the package does not exist) and the row says so with the build's error, refreshed by the page.
      await imageRow.filter({ hasText: /failed: \S/ }).waitFor({ timeout: 300_000 });
      const shown = (await imageRow.textContent()) ?? '';
      const stored = (await (await fetch(`${server.url}/v1/images/${name}`, { headers })).json()) as { error: string };
      assert.ok(shown.includes(`failed: ${stored.error.slice(0, 60)}`), shown);
      await page.getByRole('button', { name: 'Sign out' }).click();
    } finally {
      await waitForStatus(server.url, name, headers);
      await fetch(`${server.url}/v1/images/${name}`, { method: 'DELETE', headers });
    }
  });
});

/** Waits until the image's build has ended (a delete is refused while it builds). */
async function waitForStatus(url: string, name: string, headers: Record<string, string>): Promise<void> {
  const deadline = Date.now() + 300_000;
  while (Date.now() < deadline) {
    const image = (await (await fetch(`${url}/v1/images/${name}`, { headers })).json()) as { status?: string };
    if (image.status !== 'building') return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
