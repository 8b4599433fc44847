/**
 * Dependency builds end to end against a real server (sandbox executor) and the real npm registry: a node bundle with
 * package.json + package-lock.json deployed with `kindling deploy --dir` gets its dependencies installed by a build
 * (npm ci in a build sandbox) into a layer seen at /work/node_modules; a redeploy with the same lockfile reuses the
 * layer; a lockfile naming a package that does not exist fails the deploy with npm's error and leaves the previous
 * version serving; unused layers go with their functions. Skips with the reason when bwrap is missing.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, KindlingError } from '@kindling/sdk';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { directoryMaker } from './helpers/directories.js';
import { waitFor } from './helpers/wait.js';
import { brokenLock, npmProject, registryReach } from './helpers/npm-builds.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const sandboxMissing = await sandboxUnavailableReason();

const directory = directoryMaker('kindling-builds-');

/** A package.json with these dependencies and its lockfile, made by npm itself (resolved against the real registry). */
const project = (dependencies: Record<string, string>, extra: Record<string, string> = {}): string => npmProject(directory(extra), dependencies);

const HANDLER = "import ms from 'ms';\nimport kleur from 'kleur';\nkleur.enabled = true;\nexport async function handler(body) {\n  return JSON.stringify({ ms: ms(body.toString('utf8')), red: kleur.red('x') });\n}\n";

describe('dependency builds (sandbox executor, npm registry)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  let url: string[];
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', ...(await registryReach()) });
    client = new Kindling({ url: server.url });
    url = ['--url', server.url];
  });
  after(() => server?.stop());

  it('installs two npm packages with kindling deploy --dir, and a redeploy with the same lockfile reuses the layer', async () => {
    const dir = project({ ms: '2.1.3', kleur: '4.1.5' }, { 'index.js': HANDLER });
    const deployed = await execFileAsync('node', [CLI, 'deploy', 'deps-app', '--dir', dir, '--runtime', 'node', '--handler', 'index.js:handler', '--json', ...url]);
    const first = JSON.parse(deployed.stdout) as { layer?: { sha256: string; reused: boolean; buildMs: number; bytes: number } };
    // The deploy printed npm's log as the build ran (on stderr: stdout is the JSON).
    assert.match(deployed.stderr, /building deps-app: build bld_\w+/);
    assert.match(deployed.stderr, /http fetch GET 200 https?:\/\/\S+/);
    assert.ok(first.layer, deployed.stdout);
    assert.equal(first.layer.reused, false);
    assert.ok(first.layer.bytes > 0);
    assert.ok(existsSync(join(server.dataDir, 'layers', first.layer.sha256, 'ms', 'package.json')));
    const result = await client.functions.invoke('deps-app', '2h');
    assert.equal(result.exitCode, 0, result.text());
    assert.deepEqual(JSON.parse(result.text()), { ms: 7_200_000, red: '\u001b[31mx\u001b[39m' });

    // The code changes, the lockfile does not: no build, the same layer.
    writeFileSync(join(dir, 'index.js'), HANDLER.replace("ms(body.toString('utf8'))", "ms(body.toString('utf8')) + 1"));
    const again = await execFileAsync('node', [CLI, 'deploy', 'deps-app', '--dir', dir, '--runtime', 'node', '--handler', 'index.js:handler', ...url]);
    assert.match(again.stdout, new RegExp(`deployed deps-app version 2 \\(handler\\) .* dependencies sha256:${first.layer.sha256} \\(layer reused\\)`));
    const view = await client.functions.get('deps-app');
    const { buildId, ...layer } = view.layer ?? {};
    assert.deepEqual(layer, { sha256: first.layer.sha256, bytes: first.layer.bytes, reused: true, buildMs: 0 });
    // A reused layer is a build too (one with nothing to install): its own id, ready, its log says why.
    assert.match(String(buildId), /^bld_/);
    assert.match((await client.functions.buildLogs('deps-app', String(buildId))).log, /built before: nothing to install/);
    assert.equal(JSON.parse((await client.functions.invoke('deps-app', '1s')).text()).ms, 1001);
  });

  it('fails a build on a package the registry does not have, with npm\'s error; the previous version keeps serving', async () => {
    const dir = project({ ms: '2.1.3' }, { 'index.js': "import ms from 'ms';\nexport const handler = (body) => String(ms(body.toString()));\n" });
    await client.functions.deployBundle('deps-keep', { runtime: 'node', handler: 'index.js:handler' }, execFileSync('tar', ['-cf', '-', '-C', dir, '.']), { requestTimeoutMs: 0 });
    assert.equal((await client.functions.invoke('deps-keep', '1m')).text(), '60000');

    brokenLock(dir);
    const failed = await execFileAsync('node', [CLI, 'deploy', 'deps-keep', '--dir', dir, '--runtime', 'node', '--handler', 'index.js:handler', ...url]).then(
      () => assert.fail('expected the deploy to fail'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /BUILD_FAILED/);
    assert.match(failed.stderr, /E404|404 Not Found/);
    const viaSdk = await client.functions.deployBundle('deps-keep', { runtime: 'node', handler: 'index.js:handler' }, execFileSync('tar', ['-cf', '-', '-C', dir, '.']), { requestTimeoutMs: 0 }).then(
      () => assert.fail('expected BUILD_FAILED'),
      (error: unknown) => error,
    );
    assert.ok(viaSdk instanceof KindlingError);
    assert.equal(viaSdk.status, 422);
    assert.equal(viaSdk.code, 'BUILD_FAILED');
    assert.match(String((viaSdk.details as { log?: string }).log), /kindling-no-such-package-4f2a9c/);
    // The failed build is recorded: its id is in the error, its log (npm's 404) behind the log route and the CLI.
    const buildId = String((viaSdk.details as { buildId?: string }).buildId);
    assert.match(buildId, /^bld_/);
    assert.match(viaSdk.message, new RegExp(buildId));
    const logs = await client.functions.buildLogs('deps-keep', buildId);
    assert.equal(logs.status, 'failed');
    assert.match(logs.log, /E404|404 Not Found/);
    assert.match(logs.log, /kindling-no-such-package-4f2a9c/);
    const printed = await execFileAsync('node', [CLI, 'functions', 'build-log', 'deps-keep', buildId, ...url]);
    assert.match(printed.stdout, /kindling-no-such-package-4f2a9c/);
    // Still version 1, still answering; the function shows the failed build next to the version that serves.
    const view = await client.functions.get('deps-keep');
    assert.equal(view.version, 1);
    assert.equal(view.lastBuild?.id, buildId);
    assert.equal(view.lastBuild?.status, 'failed');
    assert.match(String(view.lastBuild?.error), /npm ci exited/);
    assert.match(String(view.layer?.buildId), /^bld_/);
    assert.equal((await client.functions.builds('deps-keep')).find((b) => b.id === view.layer?.buildId)?.status, 'ready');
    const listed = await execFileAsync('node', [CLI, 'functions', 'list', ...url]);
    assert.match(listed.stdout, /deps-keep\s+1\s+handler\s+node20\s+failed/);
    assert.equal((await client.functions.invoke('deps-keep', '1m')).text(), '60000');
  });

  it('removes a layer once no version refers to it', async () => {
    const dir = project({ ms: '2.1.2' }, { 'index.js': "import ms from 'ms';\nexport const handler = () => String(ms('1s'));\n" });
    const info = await client.functions.deployBundle('deps-gone', { runtime: 'node', handler: 'index.js:handler' }, execFileSync('tar', ['-cf', '-', '-C', dir, '.']), { requestTimeoutMs: 0 });
    assert.ok(info.layer);
    const layerDir = join(server.dataDir, 'layers', info.layer.sha256);
    assert.ok(existsSync(layerDir));
    await client.functions.delete('deps-gone');
    await waitFor(() => !existsSync(layerDir), { what: 'the unused layer to be removed' });
    assert.deepEqual(readdirSync(join(server.dataDir, 'layers')).filter((name) => name.startsWith('.stage-')), []);
  });
});

describe('build logs are the tenant\'s own (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  it('answers another tenant\'s build id with 404; a failed first deploy\'s build is listed with its log', async () => {
    const server = await startTestServer({ executor: 'sandbox' });
    try {
      const open = new Kindling({ url: server.url });
      const created = await open.tenants.create('builds-a');
      const admin = new Kindling({ url: server.url, apiKey: created.adminKey! });
      const tenantA = new Kindling({ url: server.url, apiKey: created.apiKey });
      // A lockfile npm cannot read fails the build at once, without the network.
      const dir = directory({ 'package.json': '{"name":"app","version":"1.0.0","dependencies":{"ms":"2.1.3"}}\n', 'package-lock.json': '{ not json', 'index.js': 'exports.handler = () => "x";\n' });
      const tar = execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
      const failed = await tenantA.functions.deployBundle('scoped', { runtime: 'node', handler: 'index.js:handler' }, tar, { requestTimeoutMs: 0 }).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: unknown) => error as KindlingError,
      );
      assert.equal(failed.code, 'BUILD_FAILED');
      const buildId = String((failed.details as { buildId?: string }).buildId);
      // The first deploy failed: no function, but its build is listed and its log readable by its tenant.
      await assert.rejects(tenantA.functions.get('scoped'), (error: KindlingError) => error.code === 'FUNCTION_NOT_FOUND');
      assert.deepEqual((await tenantA.functions.builds('scoped')).map((b) => [b.id, b.status]), [[buildId, 'failed']]);
      assert.match((await tenantA.functions.buildLogs('scoped', buildId)).log, /EJSONPARSE|JSON|package-lock/i);
      // The admin's tenant (default) has no function "scoped": the same id is not its build.
      await assert.rejects(admin.functions.buildLogs('scoped', buildId), (error: KindlingError) => error.status === 404 && error.code === 'BUILD_NOT_FOUND');
      assert.deepEqual(await admin.functions.builds('scoped'), []);
      await assert.rejects(tenantA.functions.buildLogs('scoped', 'bld_nope'), (error: KindlingError) => error.code === 'BUILD_NOT_FOUND');
    } finally {
      await server.stop();
    }
  });
});
