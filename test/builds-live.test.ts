/**
 * Deploys that do not wait for their build, and build logs followed live, against a real server (sandbox executor)
 * whose python builds install from a local package index the test serves (in a container, as builds-pip.test.ts).
 * The index holds a build on purpose: a request for a `kgate*` project waits until the test writes `release-<name>`,
 * so "the build is still running" is a state the test controls, not a timing it hopes for. Covered: 202 with the build
 * id, the previous version serving during the build, 409 BUILD_IN_PROGRESS for a second deploy, the log arriving
 * while the build runs, `end` with the version; a failed build leaving the previous version; a follower of another
 * tenant's build (404); the CLI's live output and exit code; a server stopped during a build.
 * Skips with the reason when bwrap or Docker is missing.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, KindlingError, type BuildLogEvent, type DeployAccepted, type FunctionInfo } from '@kindling/sdk';
import { docker, dockerUnavailableReason, newDataDir, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';
import { addProject, INDEX_SERVER } from './helpers/gated-index.js';
import { SqliteBuildStore } from '../src/store/builds-sqlite.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const missing = (await sandboxUnavailableReason()) ?? (await dockerUnavailableReason());

const work = mkdtempSync(join(tmpdir(), 'kindling-live-builds-'));
chmodSync(work, 0o755);
after(() => rmSync(work, { recursive: true, force: true }));

function directory(files: Record<string, string>): string {
  const dir = mkdtempSync(join(work, 'dir-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return dir;
}

const tarOf = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
const handler = (module: string): string => `import ${module}\n\ndef main(body):\n    return ${module}.greet(body.decode())\n`;
const SPEC = { runtime: 'python', handler: 'handler.py:main' };
const isAccepted = (answer: FunctionInfo | DeployAccepted): answer is DeployAccepted => 'build' in answer && answer.status === 'building';

describe('deploys that do not wait, and build logs followed live (sandbox executor, a local package index)', { skip: missing ?? false }, () => {
  let index: string;
  let indexUrl: string;
  let indexIp: string;
  let container: ReturnType<typeof docker.getContainer> | null = null;
  let server: TestServer;
  let client: Kindling;
  const release = (project: string): void => writeFileSync(join(index, `release-${project}`), '');

  before(async () => {
    index = mkdtempSync(join(work, 'index-'));
    for (const [name, greeting] of [['kgreet', 'hello'], ['kgateone', 'gated'], ['kgatecli', 'cli'], ['kgatedel', 'deleted']] as const) addProject(index, name, greeting);
    writeFileSync(join(index, 'simple', 'index.html'), '<!DOCTYPE html><html><body></body></html>\n');
    execFileSync('chmod', ['-R', 'a+rX', index]);
    const made = await docker.createContainer({
      Image: 'kindling/python',
      Cmd: ['python3', '-c', INDEX_SERVER],
      Labels: { 'dev.kindling.test': 'live-builds-index' },
      HostConfig: { Binds: [`${index}:/srv:ro`], AutoRemove: false, NetworkMode: 'bridge' },
    });
    container = made;
    await made.start();
    const ip = (await made.inspect()).NetworkSettings.Networks.bridge?.IPAddress;
    assert.ok(ip, 'the index container has a bridge address');
    indexIp = ip;
    indexUrl = `http://${ip}:8000/simple`;
    await waitFor(async () => (await fetch(`${indexUrl}/kgreet/`).catch(() => null))?.ok === true, { what: 'the package index to answer' });
    server = await startTestServer({ executor: 'sandbox', egressAllow: [`${ip}/32`], build: { pipIndexUrl: indexUrl } });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    // Every gate opens, so that no build (nor the index's threads) waits on one.
    if (index !== undefined) for (const project of ['kgateone', 'kgatecli', 'kgatedel', 'kgatestop']) release(project);
    await server?.stop();
    await container?.remove({ force: true }).catch(() => undefined);
  });

  it('answers 202 with the build, serves the previous version while it builds, refuses a second deploy, streams the log live and ends with the version', async () => {
    const dir = directory({ 'handler.py': handler('kgreet'), 'requirements.txt': 'kgreet==1.0.0\n' });
    const first = await client.functions.deployBundle('live-app', SPEC, tarOf(dir), { requestTimeoutMs: 0 });
    assert.equal(first.version, 1);

    writeFileSync(join(dir, 'handler.py'), handler('kgateone'));
    writeFileSync(join(dir, 'requirements.txt'), 'kgateone==1.0.0\n');
    const answer = await fetch(`${server.url}/v1/functions/live-app`, {
      method: 'PUT',
      body: new Uint8Array(tarOf(dir)),
      headers: { 'content-type': 'application/x-tar', 'kindling-function-spec': JSON.stringify(SPEC), prefer: 'respond-async' },
    });
    assert.equal(answer.status, 202, await answer.clone().text());
    const accepted = (await answer.json()) as DeployAccepted;
    assert.equal(accepted.name, 'live-app');
    assert.equal(accepted.status, 'building');
    assert.equal(accepted.build.status, 'building');
    assert.match(accepted.build.id, /^bld_/);
    assert.equal(answer.headers.get('x-kindling-build-id'), accepted.build.id);
    assert.equal(answer.headers.get('location'), `/v1/functions/live-app/builds/${accepted.build.id}`);
    assert.equal(answer.headers.get('preference-applied'), 'respond-async');

    // The index holds the build: version 1 serves, the function shows the build, another deploy is refused.
    assert.equal((await client.functions.build('live-app', accepted.build.id)).status, 'building');
    const during = await client.functions.get('live-app');
    assert.equal(during.version, 1);
    assert.equal(during.lastBuild?.id, accepted.build.id);
    assert.equal(during.lastBuild?.status, 'building');
    assert.equal((await client.functions.invoke('live-app', 'world')).text(), 'hello world');
    for (const again of [
      () => client.functions.deployBundle('live-app', SPEC, tarOf(dir), { requestTimeoutMs: 0, wait: false }),
      () => client.functions.deploy('live-app', { runtime: 'python', code: 'def main(body):\n    return "json"\n', handler: 'main' }),
    ]) {
      const refused = await again().then(
        () => assert.fail('expected 409 BUILD_IN_PROGRESS'),
        (error: unknown) => error as KindlingError,
      );
      assert.ok(refused instanceof KindlingError, String(refused));
      assert.equal(refused.status, 409);
      assert.equal(refused.code, 'BUILD_IN_PROGRESS');
      assert.equal((refused.details as { buildId?: string }).buildId, accepted.build.id);
      assert.match(refused.message, /wait until it ends/);
    }

    // Following: pip's first lines arrive while the build is held (so before it ends), then the end with version 2.
    const events: BuildLogEvent[] = [];
    let text = '';
    for await (const event of client.functions.followBuildLog('live-app', accepted.build.id)) {
      events.push(event);
      if (event.type !== 'log') continue;
      text += event.text;
      if (/Looking in indexes/.test(text) && !existsSync(join(index, 'release-kgateone'))) {
        assert.equal((await client.functions.build('live-app', accepted.build.id)).status, 'building');
        release('kgateone');
      }
    }
    assert.ok(existsSync(join(index, 'release-kgateone')), `the log never showed pip's first line: ${text}`);
    const end = events.at(-1);
    assert.equal(end?.type, 'end');
    assert.equal(end.build.status, 'ready');
    assert.equal(end.build.version, 2);
    assert.match(text, /Successfully installed kgateone-1\.0\.0/);
    assert.equal((await client.functions.get('live-app')).version, 2);
    assert.equal((await client.functions.invoke('live-app', 'world')).text(), 'gated world');
    // A build that ended: the stored log and the end at once.
    const replayed: BuildLogEvent[] = [];
    for await (const event of client.functions.followBuildLog('live-app', accepted.build.id)) replayed.push(event);
    assert.deepEqual(replayed.map((e) => e.type), ['log', 'end']);
    assert.match((replayed[0] as { text: string }).text, /Successfully installed kgateone/);
  });

  it('a failed build of a deploy that did not wait leaves the previous version serving, and says why at its end', async () => {
    const dir = directory({ 'handler.py': handler('kgreet'), 'requirements.txt': 'kgreet==1.0.0\n' });
    await client.functions.deployBundle('live-keep', SPEC, tarOf(dir), { requestTimeoutMs: 0 });
    writeFileSync(join(dir, 'requirements.txt'), 'kgreet==9.9.9\n');
    const answer = await client.functions.deployBundle('live-keep', SPEC, tarOf(dir), { requestTimeoutMs: 0, wait: false });
    assert.ok(isAccepted(answer), JSON.stringify(answer));
    let end: FunctionInfo['lastBuild'];
    let text = '';
    for await (const event of client.functions.followBuildLog('live-keep', answer.build.id)) {
      if (event.type === 'log') text += event.text;
      if (event.type === 'end') end = event.build;
    }
    assert.equal(end?.status, 'failed');
    assert.match(String(end?.error), /No matching distribution found for kgreet==9\.9\.9/);
    assert.equal(end?.version, undefined);
    assert.match(text, /No matching distribution found/);
    const view = await client.functions.get('live-keep');
    assert.equal(view.version, 1);
    assert.equal(view.lastBuild?.status, 'failed');
    assert.equal((await client.functions.invoke('live-keep', 'still')).text(), 'hello still');
    // The build over, deploys are taken again.
    writeFileSync(join(dir, 'requirements.txt'), 'kgreet==1.0.0\n');
    assert.equal((await client.functions.deployBundle('live-keep', SPEC, tarOf(dir), { requestTimeoutMs: 0 })).version, 2);
  });

  it('kindling deploy prints the build log as it runs and exits 0 once ready; non-zero with the build\'s error when it fails', async () => {
    const dir = directory({ 'handler.py': handler('kgatecli'), 'requirements.txt': 'kgatecli==1.0.0\n' });
    const child = spawn('node', [CLI, 'deploy', 'live-cli', '--dir', dir, '--runtime', 'python', '--handler', 'handler.py:main', '--url', server.url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      // Held by the index: what the CLI printed so far came from the running build.
      await waitFor(() => /Looking in indexes/.test(stderr), { what: 'pip\'s first line on the CLI\'s stderr', timeoutMs: 120_000, intervalMs: 50 });
      const [running] = await client.functions.builds('live-cli');
      assert.equal(running?.status, 'building');
      assert.match(stderr, new RegExp(`building live-cli: build ${running.id}`));
      assert.equal(stdout, '');
      // The same build followed by the CLI's build-log --follow.
      const follower = execFileAsync('node', [CLI, 'functions', 'build-log', 'live-cli', running.id, '--follow', '--url', server.url]);
      release('kgatecli');
      const followed = await follower;
      assert.match(followed.stdout, /Successfully installed kgatecli-1\.0\.0/);
      assert.match(followed.stderr, new RegExp(`build ${running.id}: ready`));
    } finally {
      release('kgatecli');
    }
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /Successfully installed kgatecli-1\.0\.0/);
    assert.match(stdout, /^deployed live-cli version 1 \(handler\) bundle sha256:\w+ \d+ bytes dependencies sha256:\w+ \(built in \d+ ms\)\n$/);
    assert.equal((await client.functions.invoke('live-cli', 'x')).text(), 'cli x');

    writeFileSync(join(dir, 'requirements.txt'), 'kgreet==9.9.9\n');
    const failed = await execFileAsync('node', [CLI, 'deploy', 'live-cli', '--dir', dir, '--runtime', 'python', '--handler', 'handler.py:main', '--url', server.url]).then(
      () => assert.fail('expected the deploy to fail'),
      (error: { code: number; stdout: string; stderr: string }) => error,
    );
    assert.equal(failed.code, 2);
    assert.equal(failed.stdout, '');
    assert.match(failed.stderr, /kindling: BUILD_FAILED: .*No matching distribution found for kgreet==9\.9\.9/s);
    assert.equal((await client.functions.invoke('live-cli', 'x')).text(), 'cli x');
  });

  it('a delete during a build wins: the build stores no version, and the name can be deployed again at once', async () => {
    const dir = directory({ 'handler.py': handler('kgatedel'), 'requirements.txt': 'kgatedel==1.0.0\n' });
    const answer = await client.functions.deployBundle('live-del', SPEC, tarOf(dir), { requestTimeoutMs: 0, wait: false });
    assert.ok(isAccepted(answer), JSON.stringify(answer));
    const events: BuildLogEvent[] = [];
    let subscribed: () => void = () => undefined;
    const firstEvent = new Promise<void>((resolve) => (subscribed = resolve));
    const following = (async () => {
      for await (const event of client.functions.followBuildLog('live-del', answer.build.id)) {
        events.push(event);
        subscribed();
      }
    })();
    try {
      // Following before the delete (the delete takes the build's records with it).
      await Promise.race([firstEvent, following]);
      // No version yet (a first deploy): the delete still answers, since the function is being deployed.
      await client.functions.delete('live-del');
      const json = await client.functions.deploy('live-del', { runtime: 'python', code: 'def main(body):\n    return "json"\n', handler: 'main' });
      assert.equal(json.version, 1);
    } finally {
      release('kgatedel');
    }
    await following;
    const end = events.at(-1);
    assert.equal(end?.type, 'end');
    assert.equal(end.build.status, 'failed');
    // The build ended without storing its version: the deploy after the delete is what serves.
    assert.equal((await client.functions.get('live-del')).version, 1);
    assert.equal((await client.functions.invoke('live-del', 'x')).text(), 'json');
  });

  it('follows only the tenant\'s own builds: another tenant\'s build id is 404', async () => {
    const created = await client.tenants.create('live-builds-b');
    const tenantB = new Kindling({ url: server.url, apiKey: created.apiKey });
    const admin = new Kindling({ url: server.url, apiKey: created.adminKey! });
    const dir = directory({ 'handler.py': handler('kgreet'), 'requirements.txt': 'kgreet==1.0.0\n' });
    const answer = await tenantB.functions.deployBundle('scoped-live', SPEC, tarOf(dir), { requestTimeoutMs: 0, wait: false });
    assert.ok(isAccepted(answer), JSON.stringify(answer));
    // The admin's own tenant (default) has no such build.
    await assert.rejects(
      async () => {
        for await (const _ of admin.functions.followBuildLog('scoped-live', answer.build.id)) assert.fail('no event of another tenant\'s build');
      },
      (error: KindlingError) => error.status === 404 && error.code === 'BUILD_NOT_FOUND',
    );
    await assert.rejects(admin.functions.build('scoped-live', answer.build.id), (error: KindlingError) => error.code === 'BUILD_NOT_FOUND');
    const events: BuildLogEvent[] = [];
    for await (const event of tenantB.functions.followBuildLog('scoped-live', answer.build.id)) events.push(event);
    assert.equal(events.at(-1)?.type, 'end');
    assert.equal((events.at(-1) as { build: { status: string } }).build.status, 'ready');
  });

  it('a server stopped during a build marks it failed (and a build left building in the store is failed at start-up)', async () => {
    const dataDir = await newDataDir();
    const config = { executor: 'sandbox' as const, egressAllow: [`${indexIp}/32`], build: { pipIndexUrl: indexUrl }, dataDir, shutdownTimeoutMs: 1_000 };
    let stopping: TestServer | null = await startTestServer(config);
    let restarted: TestServer | null = null;
    try {
      const first = new Kindling({ url: stopping.url });
      const dir = directory({ 'handler.py': handler('kgatestop'), 'requirements.txt': 'kgatestop==1.0.0\n' });
      const answer = await first.functions.deployBundle('stopped', SPEC, tarOf(dir), { requestTimeoutMs: 0, wait: false });
      assert.ok(isAccepted(answer), JSON.stringify(answer));
      await waitFor(async () => /Looking in indexes/.test((await first.functions.buildLogs('stopped', answer.build.id)).log), { what: 'the build to ask the index', timeoutMs: 120_000, intervalMs: 100 });
      // Closed while the index holds the build (close(), not stop(): the data dir stays for the next start).
      await stopping.close();
      stopping = null;
      // What a server that died leaves: a record still building (written here as the dead server would have).
      const store = new SqliteBuildStore(join(dataDir, 'kindling.db'));
      store.start({ id: 'bld_left_by_a_crash', tenant: 'default', function: 'crashed', kind: 'pip', startedAtMs: Date.now() });
      store.close();

      restarted = await startTestServer(config);
      const next = new Kindling({ url: restarted.url });
      const stopped = await next.functions.build('stopped', answer.build.id);
      assert.equal(stopped.status, 'failed');
      assert.match(String(stopped.error), /the server stopped during the build; deploy again/);
      await assert.rejects(next.functions.get('stopped'), (error: KindlingError) => error.code === 'FUNCTION_NOT_FOUND');
      const crashed = await next.functions.build('crashed', 'bld_left_by_a_crash');
      assert.equal(crashed.status, 'failed');
      assert.match(String(crashed.error), /the server stopped during the build; deploy again/);
      // Followed now, a build that ended gives its end at once.
      const events: BuildLogEvent[] = [];
      for await (const event of next.functions.followBuildLog('crashed', 'bld_left_by_a_crash')) events.push(event);
      assert.deepEqual(events.map((e) => e.type), ['end']);
    } finally {
      release('kgatestop');
      await stopping?.close();
      await restarted?.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
