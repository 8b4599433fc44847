/**
 * Python dependency builds end to end against a real server (sandbox executor): a python bundle with requirements.txt
 * gets `pip install` (wheels only) run in a build sandbox, from a package index this test serves (PEP 503 simple
 * layout, one pure-python wheel the test builds); the layer is seen at /work/.deps, on PYTHONPATH. The index runs in
 * a container on Docker's bridge: a sandbox can never reach the host itself (the egress filter rejects everything a
 * sandbox sends to the host's own addresses), so an index on the host's loopback would be unreachable; the bridge
 * address is a private one that the server opens with --egress-allow, as an operator opens an internal mirror.
 * Skips with the reason when bwrap or Docker is missing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling, KindlingError } from '@kindling/sdk';
import { docker, dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const missing = (await sandboxUnavailableReason()) ?? (await dockerUnavailableReason());

const work = mkdtempSync(join(tmpdir(), 'kindling-pip-'));
chmodSync(work, 0o755);
after(() => rmSync(work, { recursive: true, force: true }));

const b64 = (data: Buffer): string => data.toString('base64url');

/** A pure-python wheel: the files, their dist-info (METADATA, WHEEL, RECORD with sha256 of each), zipped by python3. */
function buildWheel(dir: string, name: string, version: string, files: Record<string, string>): string {
  const distInfo = `${name}-${version}.dist-info`;
  const all: Record<string, string> = {
    ...files,
    [`${distInfo}/METADATA`]: `Metadata-Version: 2.1\nName: ${name}\nVersion: ${version}\n`,
    [`${distInfo}/WHEEL`]: 'Wheel-Version: 1.0\nGenerator: kindling-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
  };
  const record = Object.entries(all).map(([path, content]) => `${path},sha256=${b64(createHash('sha256').update(content).digest())},${Buffer.byteLength(content)}`);
  all[`${distInfo}/RECORD`] = `${record.join('\n')}\n${distInfo}/RECORD,,\n`;
  const file = join(dir, `${name}-${version}-py3-none-any.whl`);
  const script = 'import json, sys, zipfile\nfiles = json.load(sys.stdin)\nwith zipfile.ZipFile(sys.argv[1], "w") as z:\n    for path, content in files.items():\n        z.writestr(path, content)\n';
  execFileSync('python3', ['-c', script, file], { input: JSON.stringify(all) });
  return file;
}

/** The index: simple/<project>/index.html linking each wheel with its sha256 (PEP 503). */
function buildIndex(): string {
  const root = mkdtempSync(join(work, 'index-'));
  const project = join(root, 'simple', 'kgreet');
  mkdirSync(project, { recursive: true });
  const wheel = buildWheel(project, 'kgreet', '1.0.0', { 'kgreet/__init__.py': 'def greet(name):\n    return "hello " + name\n' });
  const digest = createHash('sha256').update(execFileSync('cat', [wheel])).digest('hex');
  const fileName = wheel.slice(project.length + 1);
  writeFileSync(join(project, 'index.html'), `<!DOCTYPE html><html><body><a href="${fileName}#sha256=${digest}">${fileName}</a></body></html>\n`);
  writeFileSync(join(root, 'simple', 'index.html'), '<!DOCTYPE html><html><body><a href="kgreet/">kgreet</a></body></html>\n');
  execFileSync('chmod', ['-R', 'a+rX', root]);
  return root;
}

function directory(files: Record<string, string>): string {
  const dir = mkdtempSync(join(work, 'dir-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return dir;
}

/**
 * The index server: the directory's files, except the project "kslow", whose page answers 404 only once the test
 * made the file /srv/release (so a build waits on it for as long as the test needs to look at its live log).
 */
const INDEX_SERVER = [
  'import functools, http.server, os, time',
  'class H(http.server.SimpleHTTPRequestHandler):',
  '    def do_GET(self):',
  '        if self.path.startswith("/simple/kslow"):',
  '            while not os.path.exists("/srv/release"):',
  '                time.sleep(0.05)',
  '            self.send_error(404)',
  '            return',
  '        super().do_GET()',
  'http.server.ThreadingHTTPServer(("", 8000), functools.partial(H, directory="/srv")).serve_forever()',
].join('\n');

const tarOf = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
const HANDLER = 'import kgreet\n\ndef main(body):\n    return kgreet.greet(body.decode())\n';

describe('python dependency builds (sandbox executor, a local package index)', { skip: missing ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  let container: ReturnType<typeof docker.getContainer> | null = null;
  let index: string;
  before(async () => {
    index = buildIndex();
    const made = await docker.createContainer({
      Image: 'kindling/python',
      Cmd: ['python3', '-c', INDEX_SERVER],
      Labels: { 'dev.kindling.test': 'pip-index' },
      HostConfig: { Binds: [`${index}:/srv:ro`], AutoRemove: false, NetworkMode: 'bridge' },
    });
    container = made;
    await made.start();
    const ip = (await made.inspect()).NetworkSettings.Networks.bridge?.IPAddress;
    assert.ok(ip, 'the index container has a bridge address');
    const indexUrl = `http://${ip}:8000/simple`;
    await waitFor(async () => (await fetch(`${indexUrl}/kgreet/`).catch(() => null))?.ok === true, { what: 'the package index to answer' });
    server = await startTestServer({ executor: 'sandbox', egressAllow: [`${ip}/32`], build: { pipIndexUrl: indexUrl } });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    await server?.stop();
    await container?.remove({ force: true }).catch(() => undefined);
  });

  it('installs requirements.txt from the index into a layer on PYTHONPATH; the same requirements reuse it', async () => {
    const dir = directory({ 'handler.py': HANDLER, 'requirements.txt': 'kgreet==1.0.0\n' });
    const info = await client.functions.deployBundle('py-deps', { runtime: 'python', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 });
    assert.equal(info.layer?.kind, 'pip');
    assert.equal(info.layer?.reused, false);
    assert.match(String(info.layer?.buildId), /^bld_/);
    assert.equal((await client.functions.invoke('py-deps', 'world')).text(), 'hello world');
    const log = await client.functions.buildLogs('py-deps', info.layer!.buildId!);
    assert.equal(log.status, 'ready');
    assert.match(log.log, /Successfully installed kgreet-1\.0\.0/);

    // A command function of the same bundle imports it too (PYTHONPATH), and the layer is reused (no build).
    writeFileSync(join(dir, 'main.py'), 'import sys, kgreet\nprint(kgreet.greet(sys.stdin.read()), end="")\n');
    const command = await client.functions.deployBundle('py-cmd', { runtime: 'python', command: ['python3', 'main.py'] }, tarOf(dir), { requestTimeoutMs: 0 });
    assert.equal(command.layer?.sha256, info.layer?.sha256);
    assert.equal(command.layer?.reused, true);
    assert.equal((await client.functions.invoke('py-cmd', 'there')).text(), 'hello there');
  });

  it('a python3.13 bundle is built in its own image with that image\'s pip (bookworm\'s pip 23 does not run on 3.13)', async () => {
    // Requirements of their own (a comment changes the lockfile's hash): both layers are built here, whatever ran before.
    const dir = directory({ 'handler.py': 'import sys, kgreet\n\ndef main(body):\n    return "%d.%d %s" % (sys.version_info[0], sys.version_info[1], kgreet.greet(body.decode()))\n', 'requirements.txt': 'kgreet==1.0.0\n# per image\n' });
    const bookworm = await client.functions.deployBundle('py311-deps', { runtime: 'python3.11', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 });
    const trixie = await client.functions.deployBundle('py313-deps', { runtime: 'python3.13', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 });
    // The same requirements, another image: a layer of its own, built (the image is part of the layer's key).
    assert.notEqual(trixie.layer?.sha256, bookworm.layer?.sha256);
    assert.equal(trixie.layer?.reused, false);
    assert.equal((await client.functions.invoke('py313-deps', 'world')).text(), '3.13 hello world');
    assert.equal((await client.functions.invoke('py311-deps', 'world')).text(), '3.11 hello world');
    assert.match((await client.functions.buildLogs('py313-deps', trixie.layer!.buildId!)).log, /Successfully installed kgreet-1\.0\.0/);
  });

  it('fails a build on a requirement the index does not have, with pip\'s error; the previous version keeps serving', async () => {
    const dir = directory({ 'handler.py': HANDLER, 'requirements.txt': 'kgreet==1.0.0\n' });
    await client.functions.deployBundle('py-keep', { runtime: 'python', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 });
    writeFileSync(join(dir, 'requirements.txt'), 'kgreet==9.9.9\n');
    const failed = await client.functions.deployBundle('py-keep', { runtime: 'python', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 }).then(
      () => assert.fail('expected BUILD_FAILED'),
      (error: unknown) => error as KindlingError,
    );
    assert.ok(failed instanceof KindlingError);
    assert.equal(failed.status, 422);
    assert.equal(failed.code, 'BUILD_FAILED');
    assert.match(failed.message, /No matching distribution found for kgreet==9\.9\.9/);
    const buildId = String((failed.details as { buildId?: string }).buildId);
    assert.match((await client.functions.buildLogs('py-keep', buildId)).log, /No matching distribution found for kgreet==9\.9\.9/);
    const view = await client.functions.get('py-keep');
    assert.equal(view.version, 1);
    assert.equal(view.lastBuild?.status, 'failed');
    assert.equal((await client.functions.invoke('py-keep', 'again')).text(), 'hello again');
  });

  it('serves a running build\'s log so far with status building, and the stored log once it failed', async () => {
    const dir = directory({ 'handler.py': HANDLER, 'requirements.txt': 'kslow==1.0.0\n' });
    const deploying = client.functions.deployBundle('py-slow', { runtime: 'python', handler: 'handler.py:main' }, tarOf(dir), { requestTimeoutMs: 0 }).then(
      () => null,
      (error: unknown) => error as KindlingError,
    );
    try {
      // The build waits on the index: its record says building, and its log so far names the index it asked.
      let running: { id: string; status: string } | undefined;
      await waitFor(async () => (running = (await client.functions.builds('py-slow'))[0]) !== undefined, { what: 'the build to be recorded', timeoutMs: 120_000 });
      assert.equal(running!.status, 'building');
      let live: { status: string; log: string } = { status: '', log: '' };
      await waitFor(async () => /Looking in indexes/.test((live = await client.functions.buildLogs('py-slow', running!.id)).log), { what: 'pip\'s first line in the live build log', timeoutMs: 120_000, intervalMs: 100 });
      assert.equal(live.status, 'building');
    } finally {
      writeFileSync(join(index, 'release'), '');
    }
    const failed = await deploying;
    assert.equal(failed?.code, 'BUILD_FAILED');
    const stored = await client.functions.buildLogs('py-slow', String((failed?.details as { buildId?: string }).buildId));
    assert.equal(stored.status, 'failed');
    assert.match(stored.log, /No matching distribution found for kslow==1\.0\.0/);
  });
});
