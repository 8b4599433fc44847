/**
 * Custom images end to end on a real server with the sandbox and docker executors: an image made of `base` plus a
 * Debian package (jq, from the real mirror) and a directory of files is built by the server (mmdebstrap, the Docker
 * import), then used by one-off executions on both executors, a command function and a persistent sandbox; another
 * tenant can neither see nor name it; bad requests get 400s that say what to change; a package that does not exist
 * fails the build with apt's message; delete removes the rootfs and the Docker image. A python handler function runs
 * on an image built from its runtime's with a Debian package its code imports.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ImageBuildFailedError, Kindling, KindlingError } from '@kindling/sdk';
import { CustomImageService } from '../src/orchestrator/custom-images.js';
import { directoryMaker } from './helpers/directories.js';
import { IMAGES_DIR, docker, dockerUnavailableReason, gvisorUnavailableReason, microvmUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const directory = directoryMaker('kindling-image-files-');
const tar = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
/** Unique per run: the images dir is the machine's, shared with any other server on it. */
const NAME = `jq-${process.pid}`;
const BROKEN = `broken-${process.pid}`;
const PYTHON = `pyyaml-${process.pid}`;
const refused = async (promise: Promise<unknown>): Promise<KindlingError> =>
  promise.then(
    () => assert.fail('the request was accepted'),
    (error: unknown) => error as KindlingError,
  );

const unavailable = (await sandboxUnavailableReason()) ?? (await dockerUnavailableReason());
describe('custom images (sandbox and docker executors)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', enableExecutors: ['docker'] });
    client = new Kindling({ url: server.url });
    const files = directory({ 'bin/hello': '#!/bin/sh\necho "hello from $0 $1"\n', 'data/answer.json': '{"answer": [40, 2]}\n' });
    execFileSync('chmod', ['0755', join(files, 'bin/hello')]);
    const built = await client.images.create(NAME, { from: 'base', apt: ['jq'] }, { files: tar(files), pollIntervalMs: 500, requestTimeoutMs: 0 });
    assert.equal(built.status, 'ready', built.error ?? '');
  });
  after(async () => {
    await client?.images.delete(NAME).catch(() => undefined);
    await client?.images.delete(BROKEN).catch(() => undefined);
    await client?.images.delete(PYTHON).catch(() => undefined);
    await server?.stop();
    for (const short of [`u.default.${NAME}`, `u.default.${BROKEN}`, `u.default.${PYTHON}`]) {
      await rm(join(IMAGES_DIR, short), { recursive: true, force: true });
      await docker.getImage(`kindling/${short}:latest`).remove({ force: true }).catch(() => undefined);
    }
  });

  it('is listed with its packages, files and size, and its build log', async () => {
    const listed = (await client.images.list()).find((image) => image.name === NAME);
    assert.ok(listed, 'the image is listed');
    assert.equal(listed.image, `kindling/${NAME}`);
    assert.deepEqual(listed.apt, ['jq']);
    assert.equal(listed.files?.dest, `/opt/${NAME}`);
    assert.ok((listed.sizeBytes ?? 0) > 10 * 1024 * 1024, `size ${listed.sizeBytes}`);
    const shown = await client.images.get(NAME);
    assert.match(shown.log ?? '', /building rootfs \(jq\)/);
  });

  it('runs on the sandbox and the docker executor: the package and the files are there', async () => {
    for (const executor of ['sandbox', 'docker']) {
      const result = await client.execute({
        image: `kindling/${NAME}`,
        command: ['sh', '-c', `jq -c '.answer | add' /opt/${NAME}/data/answer.json && /opt/${NAME}/bin/hello x`],
        executor,
      });
      assert.equal(result.exitCode, 0, `${executor}: ${result.stderr}`);
      assert.equal(result.stdout, `42\nhello from /opt/${NAME}/bin/hello x\n`, executor);
    }
  });

  it('serves a command function and a persistent sandbox', async () => {
    await client.functions.deploy(`fn-${NAME}`, { image: `kindling/${NAME}`, command: ['jq', '-c', '.n * 2'] });
    assert.equal((await client.functions.invoke(`fn-${NAME}`, '{"n": 21}')).text(), '42\n');
    const sandbox = await client.sandboxes.create({ image: `kindling/${NAME}` });
    try {
      const result = await sandbox.commands.run(['jq', '--version']);
      assert.match(result.stdout, /^jq-1\./);
    } finally {
      await sandbox.kill();
    }
  });

  it("a handler function runs on a custom image built from its runtime's: its code imports the image's Debian package", async () => {
    const built = await client.images.create(PYTHON, { from: 'python3.13', apt: ['python3-yaml'] }, { pollIntervalMs: 500, requestTimeoutMs: 0 });
    assert.equal(built.status, 'ready', built.error ?? '');
    const code = 'import yaml\n\ndef main(body):\n    return yaml.safe_dump(yaml.safe_load(body))\n';
    for (const executor of ['sandbox', 'docker']) {
      const name = `yaml-${executor}`;
      await client.functions.deploy(name, { runtime: 'python', image: `kindling/${PYTHON}`, code, handler: 'main', executor });
      assert.equal((await client.functions.invoke(name, '{"a": [1, 2]}')).text(), 'a:\n- 1\n- 2\n', executor);
      assert.equal((await client.functions.get(name)).image, `kindling/${PYTHON}`);
    }
    // The runtime's own image has no yaml: the package came with the custom one.
    await client.functions.deploy('yaml-plain', { runtime: 'python', code, handler: 'main' });
    const plain = await client.functions.invoke('yaml-plain', '{}');
    assert.equal(plain.exitCode, 1);
    assert.match(plain.text(), /No module named 'yaml'/);
    // Another runtime's handler, or an image that is not built from the runtime's, is refused with what fits.
    const mismatch = await refused(client.functions.deploy('yaml-node', { runtime: 'node', image: `kindling/${PYTHON}`, code: 'export const main = (b) => b;', handler: 'main' }));
    assert.equal(mismatch.status, 400);
    assert.match(mismatch.message, /built from kindling\/python3\.13.*"runtime": "python3\.13"/);
    const notCustom = await refused(client.functions.deploy('yaml-base', { runtime: 'python', image: 'kindling/base', code, handler: 'main' }));
    assert.equal(notCustom.status, 400);
    assert.match(notCustom.message, /custom image built from it/);
    // Code of the runtime runs on it too, as a one-off execution and as a command function (no handler).
    const once = await client.execute({ runtime: 'python', code: 'import yaml\nprint(yaml.safe_dump({"b": 2}), end="")', image: `kindling/${PYTHON}` });
    assert.equal(once.stdout, 'b: 2\n', once.stderr);
    await client.functions.deploy('yaml-program', { runtime: 'python', image: `kindling/${PYTHON}`, code: 'import sys, yaml\nprint(yaml.safe_dump(yaml.safe_load(sys.stdin.read())), end="")' });
    assert.equal((await client.functions.invoke('yaml-program', '{"c": 3}')).text(), 'c: 3\n');
    // While kept versions run on it, the image cannot be deleted; the answer names them. Once they are gone it can.
    const inUse = await refused(client.images.delete(PYTHON));
    assert.equal(inUse.status, 409);
    assert.equal(inUse.code, 'IMAGE_IN_USE');
    assert.match(inUse.message, /"yaml-sandbox"/);
    for (const name of ['yaml-sandbox', 'yaml-docker', 'yaml-program']) await client.functions.delete(name);
    await client.images.delete(PYTHON);
    assert.equal(existsSync(join(IMAGES_DIR, `u.default.${PYTHON}`)), false);
  });

  it('bad requests get 400s that say what to change', async () => {
    const cases: [Promise<unknown>, string, RegExp][] = [
      [client.images.create('Bad_Name', { from: 'base' }, { wait: false }), 'VALIDATION_FAILED', /image name/],
      [client.images.create('python', { from: 'base' }, { wait: false }), 'VALIDATION_FAILED', /built-in/],
      [client.images.create('x1', { from: 'nope' }, { wait: false }), 'UNKNOWN_IMAGE', /built-in image/],
      [client.images.create('x1', { from: 'base', apt: ['jq; rm -rf /'] }, { wait: false }), 'VALIDATION_FAILED', /Debian package name/],
      [client.images.create('x1', { from: 'base', apt: ['-oAPT::x=1'] }, { wait: false }), 'VALIDATION_FAILED', /Debian package name/],
      [client.images.create('x1', { from: 'base', filesDest: '/etc' }, { wait: false }), 'VALIDATION_FAILED', /filesDest/],
      [client.images.create('x1', { from: 'base', filesDest: '/opt/../etc' }, { wait: false }), 'VALIDATION_FAILED', /filesDest/],
      [client.execute({ image: `kindling/u.someone-else.${NAME}`, command: ['true'] }), 'UNKNOWN_IMAGE', /not one of this tenant's images/],
    ];
    for (const [promise, code, message] of cases) {
      const error = await refused(promise);
      assert.equal(error.status, 400, error.message);
      assert.equal(error.code, code, error.message);
      assert.match(error.message, message);
    }
    // A tar with an entry that climbs out of its directory: refused before anything is built.
    const climbing = directory({ 'inner/file': 'x' });
    const evil = execFileSync('tar', ['-cf', '-', '-C', join(climbing, 'inner'), '--transform', 's,^,../../,', 'file']);
    const error = await refused(client.images.create('x2', { from: 'base' }, { files: evil, wait: false }));
    assert.equal(error.code, 'IMAGE_FILES_INVALID', error.message);
    assert.equal((await client.images.list()).some((image) => image.name === 'x1' || image.name === 'x2'), false);
    assert.equal(existsSync(join(IMAGES_DIR, 'u.default.x2')), false, 'a refused create left its directory behind');
  });

  it("another tenant neither lists nor runs this tenant's image", async () => {
    const made = await client.tenants.create('image-other');
    const admin = new Kindling({ url: server.url, apiKey: made.adminKey! });
    const other = new Kindling({ url: server.url, apiKey: made.apiKey });
    try {
      assert.deepEqual((await other.images.list()).map((image) => image.name), []);
      assert.equal((await refused(other.images.get(NAME))).status, 404);
      const error = await refused(other.execute({ image: `kindling/${NAME}`, command: ['true'] }));
      assert.equal(error.code, 'UNKNOWN_IMAGE');
      assert.equal((await refused(other.execute({ image: `kindling/u.default.${NAME}`, command: ['true'] }))).code, 'UNKNOWN_IMAGE');
      // Its owner (the default tenant, through the admin key) still runs it.
      assert.equal((await admin.execute({ image: `kindling/${NAME}`, command: ['jq', '-n', '1'] })).stdout, '1\n');
    } finally {
      // Back to the open local mode for the next tests: remove the keys by deleting the tenant, then the admin key.
      await admin.tenants.delete('image-other').catch(() => undefined);
      client = admin;
    }
  });

  it("a package that does not exist fails the build with apt's message; the image cannot be used", async () => {
    const error = await client.images.create(BROKEN, { from: 'base', apt: ['kindling-no-such-package-4f2a9c'] }, { pollIntervalMs: 500, requestTimeoutMs: 0 }).then(
      () => assert.fail('the build succeeded'),
      (caught: unknown) => caught as ImageBuildFailedError,
    );
    assert.ok(error instanceof ImageBuildFailedError, String(error));
    assert.equal(error.image.status, 'failed');
    assert.match(`${error.image.error ?? ''}\n${error.image.log ?? ''}`, /kindling-no-such-package-4f2a9c/);
    const used = await refused(client.execute({ image: `kindling/${BROKEN}`, command: ['true'] }));
    assert.equal(used.code, 'IMAGE_NOT_READY');
    assert.equal(used.status, 409);
  });

  it('at start, a Docker image of a custom image without a record (an interrupted delete) is removed; built-in ones stay', async () => {
    const orphan = `kindling/u.default.orphan-${process.pid}`;
    await docker.getImage('kindling/base:latest').tag({ repo: orphan, tag: 'latest' });
    assert.ok(await docker.getImage(`${orphan}:latest`).inspect());
    await new CustomImageService({ imagesDir: IMAGES_DIR, docker }).start();
    await assert.rejects(docker.getImage(`${orphan}:latest`).inspect());
    assert.ok(await docker.getImage('kindling/base:latest').inspect());
    // This test's own image has its record: it stays.
    assert.ok(await docker.getImage(`kindling/u.default.${NAME}:latest`).inspect());
  });

  it('delete removes the rootfs and the Docker image; the name is unknown afterwards', async () => {
    const name = `gone-${process.pid}`;
    const built = await client.images.create(name, { from: 'base' }, { pollIntervalMs: 500, requestTimeoutMs: 0 });
    assert.equal(built.status, 'ready');
    const short = `u.default.${name}`;
    assert.ok(existsSync(join(IMAGES_DIR, short, 'rootfs', 'usr')));
    assert.ok(await docker.getImage(`kindling/${short}:latest`).inspect());
    await client.images.delete(name);
    assert.equal(existsSync(join(IMAGES_DIR, short)), false);
    await assert.rejects(docker.getImage(`kindling/${short}:latest`).inspect());
    assert.equal((await refused(client.images.get(name))).status, 404);
    const error = await refused(client.execute({ image: `kindling/${name}`, command: ['true'] }));
    assert.equal(error.code, 'UNKNOWN_IMAGE');
  });
});

describe("custom images: the tenant's maxImageBytes", { skip: unavailable ?? false }, () => {
  it("an image that ends past its tenant's quota is failed with the quota's words; its files go and nothing of it counts", async () => {
    const server = await startTestServer({ executor: 'sandbox', enableExecutors: ['docker'] });
    // A tenant of its own: no other test's images count against it.
    const tenant = `imgq-${process.pid}`;
    const name = `toobig-${process.pid}`;
    const short = `u.${tenant}.${name}`;
    try {
      const created = await new Kindling({ url: server.url }).tenants.create(tenant, { quotas: { maxImageBytes: 1_000_000 } });
      const admin = new Kindling({ url: server.url, apiKey: created.adminKey! });
      const client = new Kindling({ url: server.url, apiKey: created.apiKey });
      const error = await client.images.create(name, { from: 'base' }, { pollIntervalMs: 500, requestTimeoutMs: 0 }).then(
        () => assert.fail('the build was kept'),
        (caught: unknown) => caught as ImageBuildFailedError,
      );
      assert.ok(error instanceof ImageBuildFailedError, String(error));
      assert.match(error.image.error ?? '', /TENANT_STORAGE_LIMIT|maxImageBytes \(1000000\)/);
      assert.equal(error.image.sizeBytes, null);
      assert.equal(existsSync(join(IMAGES_DIR, short, 'rootfs')), false, 'its root file system is removed');
      await assert.rejects(docker.getImage(`kindling/${short}:latest`).inspect(), 'its Docker image is removed');
      assert.equal((await admin.tenants.get(tenant)).usage?.imageBytes, 0);
      assert.equal((await refused(client.execute({ image: `kindling/${name}`, command: ['true'] }))).code, 'IMAGE_NOT_READY');
    } finally {
      await server.stop();
      await rm(join(IMAGES_DIR, short), { recursive: true, force: true });
      await docker.getImage(`kindling/${short}:latest`).remove({ force: true }).catch(() => undefined);
    }
  });
});

// The other executors take a custom image the same way: gvisor its rootfs, microvm the ext4 disk the build makes when
// the server serves microvm.
for (const { executor, unavailable, timeoutMs } of [
  { executor: 'gvisor' as const, unavailable: await gvisorUnavailableReason(), timeoutMs: 600_000 },
  // A boot under TCG takes 5 s on an idle host, much more on a busy one.
  { executor: 'microvm' as const, unavailable: await microvmUnavailableReason(), timeoutMs: 900_000 },
]) {
  describe(`custom images (${executor} executor)`, { skip: unavailable ?? false, timeout: timeoutMs }, () => {
    const name = `jq-${executor}-${process.pid}`;
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR;
      server = await startTestServer({ executor, ...(executor === 'microvm' && assetsDir ? { microvm: { assetsDir } } : {}) });
      client = new Kindling({ url: server.url, timeoutMs: 300_000 });
    });
    after(async () => {
      await client?.images.delete(name).catch(() => undefined);
      await server?.stop();
      await rm(join(IMAGES_DIR, `u.default.${name}`), { recursive: true, force: true });
    });

    it('an image with an extra Debian package is built for the executor and runs there; delete removes it', async () => {
      const built = await client.images.create(name, { from: 'base', apt: ['jq'] }, { pollIntervalMs: 500, requestTimeoutMs: 0 });
      assert.equal(built.status, 'ready', built.error ?? '');
      if (executor === 'microvm') assert.ok(existsSync(join(IMAGES_DIR, `u.default.${name}`, 'rootfs.ext4')), 'the build made the microVM disk');
      const result = await client.execute({ image: `kindling/${name}`, command: ['sh', '-c', 'echo \'{"n": [40, 2]}\' | jq -c ".n | add"'], executor });
      assert.equal(result.exitCode, 0, result.stderr);
      assert.equal(result.stdout, '42\n');
      assert.equal(result.executor, executor);
      await client.images.delete(name);
      assert.equal(existsSync(join(IMAGES_DIR, `u.default.${name}`)), false);
      const gone = await refused(client.execute({ image: `kindling/${name}`, command: ['true'], executor }));
      assert.equal(gone.code, 'UNKNOWN_IMAGE');
    });
  });
}
