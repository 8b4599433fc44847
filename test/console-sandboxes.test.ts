/**
 * The console's Sandboxes page in a real browser (Debian's Chromium driven by playwright-core) against a started
 * server on the sandbox executor (real bubblewrap): the list shows what the API made, with its state; pause, create,
 * fork and delete from the page change what the API reports; a terminal (xterm.js over the PTY WebSocket, the key as
 * a subprotocol) runs a command, Ctrl-C stops a sleep, the exit code shows and Reconnect opens a new session; the file
 * browser lists, opens directories, downloads, uploads, deletes, makes folders and downloads one as tar; the
 * tenant's snapshots are listed, made into a sandbox and deleted; an error answer shows the API's code. Saves
 * test-results/console-sandboxes.png (the page with a terminal session). Skips only when /usr/bin/chromium or
 * bubblewrap is missing (scripts/setup.sh installs both); in CI it must run.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type BrowserServer, type Page } from 'playwright-core';
import { Kindling, NotFoundError, type Sandbox } from '@kindling/sdk';
import { DEFAULT_CONSOLE_DIR } from '../src/server.js';
import { skipOrFail } from '../src/executors/test-support.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const CHROMIUM = '/usr/bin/chromium';
const KEY = 'console-sandboxes-test-key';
const RESULTS_DIR = new URL('../../test-results/', import.meta.url).pathname;

function unavailableReason(): string | null {
  if (!existsSync(CHROMIUM)) return skipOrFail('chromium', `${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)`);
  return null;
}
const unavailable = unavailableReason() ?? (await sandboxUnavailableReason());

/** Host pids of processes whose command line is exactly `marker` (sandboxed processes are visible to the host's ps). */
function processesWith(marker: string): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\s*(\d+) (.*)$/.exec(line))
    .filter((match) => match !== null && match[2]!.trim() === marker)
    .map((match) => Number(match![1]));
}

describe('console: the Sandboxes page in headless Chromium', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let browserServer: BrowserServer | undefined;
  let browser: Browser | undefined;
  let page: Page;
  let k: Kindling;

  before(async () => {
    assert.ok(existsSync(join(DEFAULT_CONSOLE_DIR, 'index.html')), `the console is not built in ${DEFAULT_CONSOLE_DIR}: run "npm run build"`);
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY });
    k = new Kindling({ url: server.url, apiKey: KEY });
    // A browser server, so that its pid is known and it can be stopped by pid whatever happens.
    browserServer = await chromium.launchServer({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    browser = await chromium.connect(browserServer.wsEndpoint());
    page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    await page.goto(server.url);
    await page.getByLabel('API key').fill(KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Sandboxes', exact: true }).waitFor();
  });

  after(async () => {
    for (const sb of await k?.sandboxes.list().catch(() => []) ?? []) await k.sandboxes.delete(sb.id).catch(() => undefined);
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

  /** Opens a sandbox's panel from its row in the list (the row appears with the next refresh at the latest). */
  async function open(sb: Sandbox): Promise<void> {
    await page.getByRole('button', { name: `Open sandbox ${sb.id}` }).click({ timeout: 15_000 });
    await page.locator('#sandbox-title').filter({ hasText: `Sandbox ${sb.id}` }).waitFor();
  }

  /** Waits for an element's text to match; a timeout says what the text was last. */
  async function textOf(selector: string, pattern: RegExp | string, timeoutMs = 15_000): Promise<string> {
    let text = '';
    try {
      await waitFor(
        async () => {
          text = (await page.locator(selector).textContent()) ?? '';
          return typeof pattern === 'string' ? text.includes(pattern) : pattern.test(text);
        },
        timeoutMs,
        `${String(pattern)} in ${selector}`,
      );
    } catch (error) {
      throw new Error(`${(error as Error).message}; it says ${JSON.stringify(text)}`);
    }
    return text;
  }

  const rowOf = (id: string) => page.locator('#sandboxes-body tr').filter({ hasText: id });

  it('lists a sandbox made through the API with its state and resource use; Pause in the page pauses it, Resume resumes it', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python', limits: { memoryMb: 192 } });
    try {
      const listed = rowOf(sb.id);
      await listed.filter({ hasText: 'running' }).waitFor({ timeout: 15_000 });
      const text = (await listed.textContent()) ?? '';
      assert.match(text, /sandbox/);
      assert.match(text, /python/);
      assert.match(text, /\/ 192 MiB/);
      assert.match(text, /\d+ ms/, `CPU use in "${text}"`);

      await open(sb);
      await page.getByRole('button', { name: 'Pause', exact: true }).click();
      await textOf('#sandbox-status', 'Paused: paused.');
      assert.equal((await k.sandboxes.get(sb.id)).state, 'paused');
      await listed.filter({ hasText: 'paused' }).waitFor({ timeout: 15_000 });
      assert.equal(await page.getByRole('button', { name: 'Pause', exact: true }).isDisabled(), true);

      await page.getByRole('button', { name: 'Resume', exact: true }).click();
      await textOf('#sandbox-status', 'Resumed: running.');
      assert.equal((await k.sandboxes.get(sb.id)).state, 'running');

      // Hibernate (files only on this executor, and the page says so); Resume wakes it.
      await page.getByRole('button', { name: 'Hibernate', exact: true }).click();
      await textOf('#sandbox-status', 'Hibernated: hibernated (files kept; its processes ended).');
      assert.equal((await k.sandboxes.get(sb.id)).state, 'hibernated');
      await listed.filter({ hasText: 'hibernated' }).waitFor({ timeout: 15_000 });
      await page.getByRole('button', { name: 'Resume', exact: true }).click();
      await textOf('#sandbox-status', 'Resumed: running.');
      assert.equal((await k.sandboxes.get(sb.id)).state, 'running');
    } finally {
      await page.getByRole('button', { name: 'Close', exact: true }).click();
      await sb.kill();
    }
  });

  it('a sandbox made in the page is the one the API lists; Delete in the page removes it', async () => {
    await page.getByLabel('Sandbox image').selectOption('bash');
    await page.getByLabel('Sandbox RAM (MiB)').fill('128');
    await page.getByRole('button', { name: 'Create sandbox' }).click();
    const id = /Created (sb_\S+) /.exec(await textOf('#sandboxes-status', /Created sb_\S+ \(running\)/, 30_000))![1]!;
    const made = await k.sandboxes.get(id);
    assert.equal(made.runtime, 'bash');
    assert.equal(made.limits.memoryMb, 128);
    // It is opened at once.
    await page.locator('#sandbox-title').filter({ hasText: `Sandbox ${id}` }).waitFor();
    await rowOf(id).waitFor({ timeout: 15_000 });

    page.once('dialog', (dialog) => void dialog.accept());
    await page.getByRole('button', { name: 'Delete sandbox' }).click();
    await textOf('#sandboxes-status', `Deleted ${id}.`);
    await assert.rejects(k.sandboxes.get(id), NotFoundError);
    await rowOf(id).waitFor({ state: 'detached', timeout: 15_000 });
    assert.equal(await page.locator('#sandbox-detail').isHidden(), true);
  });

  it('terminal: a command runs and its output shows, Ctrl-C stops a sleep, the exit code shows, Reconnect opens a new session', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      await open(sb);
      await page.getByRole('button', { name: 'Open terminal' }).click();
      await textOf('#terminal-status', `Connected to ${sb.id}`, 30_000);
      const screen = page.locator('#terminal .xterm-rows');
      const lines = async (): Promise<string[]> => screen.locator(':scope > div').allTextContents();

      /** Waits for a line of the terminal's screen to match; a timeout shows the screen. */
      const untilLine = async (test: (line: string) => boolean, what: string): Promise<void> => {
        let shown: string[] = [];
        try {
          await waitFor(async () => (shown = await lines()).some(test), 15_000, what);
        } catch (error) {
          throw new Error(`${(error as Error).message}; the terminal shows ${JSON.stringify(shown)}`);
        }
      };
      const prompt = (what: string): Promise<void> => untilLine((line) => /\$\s*$/.test(line), `the shell's prompt ${what}`);
      // The keys go to xterm's focused input: typed as a user would, once the shell is there.
      await prompt('at the start');
      await page.locator('#terminal').click();
      await page.keyboard.type('echo $((6*7))');
      await page.keyboard.press('Enter');
      await untilLine((line) => line.trim() === '42', 'a line "42"');

      const sleeper = `sleep 100${Math.floor(Math.random() * 9000) + 1000}`;
      await page.keyboard.type(sleeper);
      await page.keyboard.press('Enter');
      await waitFor(async () => processesWith(sleeper).length > 0, 15_000, 'the sleep runs');
      await page.keyboard.press('Control+c');
      await waitFor(async () => processesWith(sleeper).length === 0, 15_000, 'Ctrl-C ended the sleep');
      await page.keyboard.type('echo back$((40+2))');
      await page.keyboard.press('Enter');
      await untilLine((line) => line.trim() === 'back42', 'the shell answers after Ctrl-C');

      await page.keyboard.type('exit 3');
      await page.keyboard.press('Enter');
      await textOf('#terminal-status', 'The terminal session ended: exit code 3.');

      await page.getByRole('button', { name: 'Reconnect' }).click();
      await textOf('#terminal-status', `Connected to ${sb.id}`, 30_000);
      await prompt('of the new session');
      await page.locator('#terminal').click();
      await page.keyboard.type('echo again$((1+1))');
      await page.keyboard.press('Enter');
      await untilLine((line) => line.trim() === 'again2', 'the new session answers');
      // Keyboard users are not trapped: Tab completes in the shell, Escape then Tab moves on to the Reconnect button.
      await page.keyboard.press('Escape');
      await page.keyboard.press('Tab');
      assert.equal(await page.evaluate(() => document.activeElement?.id), 'terminal-connect');
      await mkdir(RESULTS_DIR, { recursive: true });
      await page.locator('#sandboxes').screenshot({ path: join(RESULTS_DIR, 'console-sandboxes.png') });
      // The sandbox lives on after the sessions.
      assert.equal((await sb.commands.run(['echo', 'alive'])).stdout, 'alive\n');
    } finally {
      await page.getByRole('button', { name: 'Close', exact: true }).click();
      await sb.kill();
    }
  });

  it('files: lists what the API wrote, opens a directory and goes up, downloads the bytes, uploads a file, deletes one', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      const bytes = new Uint8Array([0, 1, 2, 250, 255, 10, 104, 105]);
      await sb.files.write('/work/data.bin', bytes);
      await sb.files.write('/work/sub/inner.txt', 'inner\n');
      await open(sb);
      const files = page.locator('#files-body');
      const dataRow = files.locator('tr').filter({ hasText: 'data.bin' });
      await dataRow.waitFor({ timeout: 15_000 });
      assert.match((await dataRow.textContent()) ?? '', /file\s*8\s*644/);
      assert.equal(await page.locator('#files-path').textContent(), '/work');

      // Into a directory and back up.
      await page.getByRole('button', { name: 'Open directory sub' }).click();
      await files.locator('tr').filter({ hasText: 'inner.txt' }).waitFor();
      assert.equal(await page.locator('#files-path').textContent(), '/work/sub');
      await page.getByRole('button', { name: 'Up to the parent directory' }).click();
      await dataRow.waitFor();
      assert.equal(await page.locator('#files-path').textContent(), '/work');

      // Download: the browser saves exactly the file's bytes.
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download data.bin' }).click()]);
      assert.equal(download.suggestedFilename(), 'data.bin');
      const saved = join(await mkdtemp(join(tmpdir(), 'kindling-console-')), 'data.bin');
      try {
        await download.saveAs(saved);
        assert.deepEqual(new Uint8Array(await readFile(saved)), bytes);
      } finally {
        await rm(dirname(saved), { recursive: true, force: true });
      }

      // Upload into the directory shown.
      await page.getByLabel('File to upload').setInputFiles({ name: 'up.txt', mimeType: 'text/plain', buffer: Buffer.from('uploaded from the page\n') });
      await page.getByRole('button', { name: 'Upload', exact: true }).click();
      await textOf('#files-status', 'Uploaded /work/up.txt (23 bytes).');
      assert.equal(await sb.files.read('/work/up.txt'), 'uploaded from the page\n');
      await files.locator('tr').filter({ hasText: 'up.txt' }).waitFor();

      // Delete (after the page asks).
      page.once('dialog', (dialog) => void dialog.accept());
      await page.getByRole('button', { name: 'Delete data.bin' }).click();
      await textOf('#files-status', 'Deleted /work/data.bin.');
      await dataRow.waitFor({ state: 'detached' });
      await assert.rejects(sb.files.read('/work/data.bin'), NotFoundError);
    } finally {
      await page.getByRole('button', { name: 'Close', exact: true }).click();
      await sb.kill();
    }
  });

  it('folders and snapshots: Make folder makes it, Download folder gives its tar, a snapshot is listed, New sandbox makes one from it, Delete removes it', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    const made: string[] = [];
    try {
      await sb.files.write('/work/keep.txt', 'kept in the snapshot\n');
      await open(sb);
      await page.locator('#files-body tr').filter({ hasText: 'keep.txt' }).waitFor({ timeout: 15_000 });

      await page.getByLabel('New folder').fill('made-here');
      await page.getByRole('button', { name: 'Make folder' }).click();
      await textOf('#files-status', 'Made /work/made-here.');
      assert.ok((await sb.files.list('/work')).some((entry) => entry.name === 'made-here' && entry.type === 'dir'));
      await page.getByLabel('New folder').fill('a/b');
      await page.getByRole('button', { name: 'Make folder' }).click();
      await textOf('#files-status', 'without "/"');

      // The tar of /work names what is in it (tar(1) lists it).
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download folder (.tar)' }).click()]);
      const saved = join(await mkdtemp(join(tmpdir(), 'kindling-console-')), 'work.tar');
      try {
        await download.saveAs(saved);
        const names = execFileSync('tar', ['-tf', saved], { encoding: 'utf8' }).split('\n').map((n) => n.replace(/^\.\//, '').replace(/\/$/, ''));
        assert.ok(names.includes('keep.txt') && names.includes('made-here'), `tar lists ${names.join(', ')}`);
      } finally {
        await rm(dirname(saved), { recursive: true, force: true });
      }

      const snap = await sb.snapshot();
      const snapRow = page.locator('#snapshots-body tr').filter({ hasText: snap.id });
      await snapRow.waitFor({ timeout: 15_000 });
      assert.match((await snapRow.textContent()) ?? '', new RegExp(`${sb.id}.*files`));

      await page.getByRole('button', { name: `New sandbox from snapshot ${snap.id}` }).click();
      const created = await textOf('#snapshots-status', /Created sb_\S+ from/, 30_000);
      const id = /sb_[a-z0-9]+/.exec(created)![0];
      made.push(id);
      assert.equal(await k.sandboxes.connect(id).then((other) => other.files.read('/work/keep.txt')), 'kept in the snapshot\n');
      await k.sandboxes.delete(id);

      page.once('dialog', (dialog) => void dialog.accept());
      await page.getByRole('button', { name: `Delete snapshot ${snap.id}` }).click();
      await textOf('#snapshots-status', `Deleted ${snap.id}.`);
      await snapRow.waitFor({ state: 'detached' });
      assert.equal((await k.sandboxes.listSnapshots()).some((s) => s.id === snap.id), false);
    } finally {
      await page.getByRole('button', { name: 'Close', exact: true }).click();
      for (const id of made) await k.sandboxes.delete(id).catch(() => undefined);
      await sb.kill();
    }
  });

  it("errors: a fork over the tenant's cap shows the API's code and message, and nothing is made", async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      await open(sb);
      const before = (await k.sandboxes.list()).length;
      await page.getByLabel('Fork count').fill('500');
      await page.getByRole('button', { name: 'Fork', exact: true }).click();
      await textOf('#sandbox-status', 'LIMIT_OUT_OF_RANGE: ');
      assert.equal(await page.locator('#sandbox-status').getAttribute('class'), 'error');
      assert.equal((await k.sandboxes.list()).length, before);

      // Within the cap the fork is made and the page names the new sandboxes.
      await page.getByLabel('Fork count').fill('2');
      await page.getByRole('button', { name: 'Fork', exact: true }).click();
      const forked = await textOf('#sandbox-status', /Forked from snapshot \S+ into sb_\S+, sb_\S+\./, 30_000);
      const forks = [...forked.matchAll(/sb_[a-z0-9]+/g)].map((m) => m[0]);
      assert.equal(forks.length, 2);
      for (const id of forks) assert.equal((await k.sandboxes.get(id)).state, 'running');
      for (const id of forks) await k.sandboxes.delete(id);
    } finally {
      await page.getByRole('button', { name: 'Close', exact: true }).click();
      await sb.kill();
    }
  });
});
