/**
 * Functions with Debian packages, end to end on a real server with the sandbox executor: `apt` in the spec (or a
 * bundle's kindling.json) makes the deploy build an image of the runtime's plus the packages from the real Debian
 * mirror, once per package set; the function runs on it (handlers, command functions, bundles); the same set is reused
 * by other functions and redeploys without a build; apt's failure fails the deploy and the previous version serves;
 * bad input gets 400s; the image cannot be deleted while a function runs on it and goes by itself once none does.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling, type KindlingError } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { IMAGES_DIR, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const directory = directoryMaker('kindling-packages-');
const tarOf = (dir: string): Buffer => execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.']);
const refused = async (promise: Promise<unknown>): Promise<KindlingError> =>
  promise.then(
    () => assert.fail('the request was accepted'),
    (error: unknown) => error as KindlingError,
  );
/** A small pure-python package that the python images do not have. */
const PACKAGES = ['python3-six'];
const SIX_HANDLER = 'import six\n\ndef handler(body):\n    return six.ensure_binary("six %s %s" % (six.__name__, body.decode()))\n';

const unavailable = await sandboxUnavailableReason();
describe('functions with Debian packages (apt)', { skip: unavailable ?? false, timeout: 900_000 }, () => {
  let server: TestServer;
  let client: Kindling;
  /** This server's images for packages: their directories under the (machine-wide) images dir. */
  const packageImageDirs = (): string[] => readdirSync(IMAGES_DIR).filter((name) => name.startsWith(`u.default.pkgs-${server.ownerId.slice(0, 8)}-`));

  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
    // A first build downloads and unpacks the packages: minutes on a slow mirror.
    client = new Kindling({ url: server.url, timeoutMs: 600_000 });
  });
  after(async () => {
    const left = server === undefined ? [] : packageImageDirs();
    await server?.stop();
    for (const dir of left) await rm(join(IMAGES_DIR, dir), { recursive: true, force: true });
  });

  it('a python handler imports the package: the deploy builds the image, records the build, and the function runs on it', async () => {
    const info = await client.functions.deploy('six-handler', { runtime: 'python', handler: 'handler', code: SIX_HANDLER, apt: PACKAGES });
    assert.deepEqual(info.apt, PACKAGES);
    assert.match(info.aptImage ?? '', /^kindling\/u\.default\.pkgs-[0-9a-f]{8}-[0-9a-f]{16}$/);
    assert.equal((await client.functions.invoke('six-handler', 'x')).text(), 'six six x');
    const [build] = await client.functions.builds('six-handler');
    assert.equal(build?.kind, 'apt');
    assert.equal(build?.status, 'ready');
    const { log } = await client.functions.buildLogs('six-handler', build!.id);
    assert.match(log, /python3-six/);
    // Listed with the tenant's images, marked as made for functions.
    const image = (await client.images.list()).find((candidate) => `kindling/u.default.${candidate.name}` === info.aptImage);
    assert.ok(image, 'the image is listed');
    assert.equal(image.forFunctions, true);
    assert.deepEqual(image.apt, PACKAGES);
    assert.equal(image.status, 'ready');
    // Without the packages the same code fails: they came with the image.
    await client.functions.deploy('six-plain', { runtime: 'python', handler: 'handler', code: SIX_HANDLER });
    const plain = await client.functions.invoke('six-plain', 'x');
    assert.equal(plain.exitCode, 1);
    assert.match(plain.text(), /No module named 'six'/);
  });

  it('the same package set is reused without a build: by a command function, a redeploy and a bundle listing it in kindling.json', async () => {
    const first = await client.functions.deploy('six-first', { runtime: 'python', handler: 'handler', code: SIX_HANDLER, apt: PACKAGES });
    const started = Date.now();
    const program = await client.functions.deploy('six-program', { runtime: 'python', code: 'import sys, six\nprint(six.__name__, sys.stdin.read())', apt: [...PACKAGES, ...PACKAGES] });
    const reusedMs = Date.now() - started;
    assert.equal(program.aptImage, first.aptImage, 'one image per package set');
    assert.deepEqual(program.apt, PACKAGES, 'duplicates dropped');
    assert.ok(reusedMs < 20_000, `a reused image makes a deploy quick (${reusedMs} ms)`);
    assert.equal((await client.functions.invoke('six-program', 'y')).text(), 'six y\n');
    const [build] = await client.functions.builds('six-program');
    assert.match((await client.functions.buildLogs('six-program', build!.id)).log, /reused/);
    // A bundle: the packages in its kindling.json.
    const bundle = directory({ 'h.py': 'import six\n\ndef main(body):\n    return "bundle " + six.__name__\n', 'kindling.json': JSON.stringify({ apt: PACKAGES }) });
    const bundled = await client.functions.deployBundle('six-bundle', { runtime: 'python', handler: 'h.py:main' }, tarOf(bundle));
    assert.equal(bundled.aptImage, first.aptImage);
    assert.deepEqual(bundled.apt, PACKAGES);
    assert.equal((await client.functions.invoke('six-bundle', '')).text(), 'bundle six');
  });

  it('the CLI deploys with --apt, follows the build and says which image the function runs on', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(process.execPath, [CLI, 'deploy', 'six-cli', '--runtime', 'python', '--apt', 'python3-six', '--handler', 'handler', '--code', SIX_HANDLER, '--url', server.url], (error, out, err) =>
        resolve({ code: error === null ? 0 : (child.exitCode ?? 1), stdout: out, stderr: err }),
      );
    });
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^deployed six-cli version 1 \(handler\) on kindling\/u\.default\.pkgs-[0-9a-f-]+ \(\+ python3-six\)\n$/);
    assert.match(stderr, /python3-six/, 'the build log was followed');
    assert.equal((await client.functions.invoke('six-cli', 'w')).text(), 'six six w');
  });

  it("a package that does not exist fails the deploy with apt's words, and the previous version keeps serving", async () => {
    await client.functions.deploy('six-broken', { runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return b"v1"\n' });
    const failed = await refused(client.functions.deploy('six-broken', { runtime: 'python', handler: 'handler', code: SIX_HANDLER, apt: ['kindling-no-such-package'] }));
    assert.equal(failed.status, 422);
    assert.equal(failed.code, 'BUILD_FAILED');
    assert.match(failed.message, /kindling-no-such-package/);
    const shown = await client.functions.get('six-broken');
    assert.equal(shown.version, 1);
    assert.equal(shown.lastBuild?.status, 'failed');
    assert.equal((await client.functions.invoke('six-broken', '')).text(), 'v1');
  });

  it('bad input gets 400s that say what to change', async () => {
    const cases: [() => Promise<unknown>, string, RegExp][] = [
      [() => client.functions.deploy('bad-a', { runtime: 'python', code: '1', apt: ['Not A Package'] }), 'VALIDATION_FAILED', /not a Debian package name/],
      [() => client.functions.deploy('bad-b', { runtime: 'python', code: '1', apt: ['jq'], image: 'kindling/python3.13' }), 'CONFLICTING_FIELDS', /put the packages in that image/],
      [() => client.functions.deploy('bad-c', { image: 'kindling/base', command: ['true'], apt: ['jq'] }), 'VALIDATION_FAILED', /give "runtime"/],
      [() => client.functions.deployBundle('bad-d', { runtime: 'python', handler: 'h.py:main' }, tarOf(directory({ 'h.py': 'def main(b):\n    return b\n', 'kindling.json': '{"apt": [' }))), 'BUNDLE_INVALID', /kindling\.json is not JSON/],
      [() => client.functions.deployBundle('bad-e', { runtime: 'python', handler: 'h.py:main' }, tarOf(directory({ 'h.py': 'def main(b):\n    return b\n', 'kindling.json': '{"apt": [], "pip": []}' }))), 'BUNDLE_INVALID', /fields this server does not know \(pip\)/],
      [() => client.functions.deployBundle('bad-f', { runtime: 'python', handler: 'h.py:main', apt: ['jq'] }, tarOf(directory({ 'h.py': 'def main(b):\n    return b\n', 'kindling.json': '{"apt": ["curl"]}' }))), 'CONFLICTING_FIELDS', /list different packages/],
      [() => client.images.create('pkgs-mine', { from: 'base' }), 'VALIDATION_FAILED', /functions' Debian packages/],
    ];
    for (const [request, code, message] of cases) {
      const error = await refused(request());
      assert.equal(error.status, 400, `${code}: ${error.message}`);
      assert.equal(error.code, code, error.message);
      assert.match(error.message, message);
    }
    for (const name of ['bad-a', 'bad-b', 'bad-c', 'bad-d', 'bad-e', 'bad-f']) assert.equal((await client.functions.builds(name)).length, 0, `${name}: no build started`);
  });

  it('the image cannot be deleted while a function runs on it, and goes by itself once no kept version names it', async () => {
    const info = await client.functions.deploy('six-kept', { runtime: 'python', handler: 'handler', code: SIX_HANDLER, apt: PACKAGES });
    const name = info.aptImage!.replace('kindling/u.default.', '');
    // The other functions of this server that name it (the other tests') go first: the refusal names at most five.
    for (const fn of await client.functions.list()) {
      if (fn.aptImage === info.aptImage && fn.name !== 'six-kept') await client.functions.delete(fn.name);
    }
    const inUse = await refused(client.images.delete(name));
    assert.equal(inUse.status, 409);
    assert.equal(inUse.code, 'IMAGE_IN_USE');
    assert.match(inUse.message, /used by function "six-kept"/);
    await client.functions.delete('six-kept');
    await waitFor(async () => !(await client.images.list()).some((image) => image.name === name), 30_000, 'the unused image removed');
    await waitFor(async () => !existsSync(join(IMAGES_DIR, `u.default.${name}`)), 30_000, 'its directory removed');
    // Deployed again, the packages get a new image.
    const again = await client.functions.deploy('six-again', { runtime: 'python', handler: 'handler', code: SIX_HANDLER, apt: PACKAGES });
    assert.equal(again.aptImage, info.aptImage);
    assert.equal((await client.functions.invoke('six-again', 'z')).text(), 'six six z');
  });
});
