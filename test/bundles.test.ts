/**
 * Function bundles end to end against a real server: a tar of a directory deployed with the SDK and the CLI, run as a
 * node or python handler (FILE:FUNCTION) or a command in the bundle's read-only /work, on the sandbox and docker
 * executors; unsafe archives refused with 400 BUNDLE_INVALID naming the entry; the size limit; zip refused; the
 * content hash per version; unused bundles removed from disk. Skips with the reason when an executor is missing.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, KindlingError } from '@kindling/sdk';
import { containersOf, dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { directoryMaker } from './helpers/directories.js';
import { waitFor } from './helpers/wait.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const sandboxMissing = await sandboxUnavailableReason();
const dockerMissing = await dockerUnavailableReason();

const directory = directoryMaker('kindling-bundles-');

/** The directory as a tar archive (GNU tar). */
const tarOf = (dir: string): Buffer => execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.'], { maxBuffer: 64 * 1024 * 1024 });

/** One ustar header block, for archives GNU tar would not make (absolute names, `..`, links out, fifos). */
function header(name: string, options: { type?: string; size?: number; link?: string } = {}): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, 'utf8');
  block.write('0000644\0', 100, 'latin1');
  block.write('0000000\0', 108, 'latin1');
  block.write('0000000\0', 116, 'latin1');
  block.write(`${(options.size ?? 0).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  block.write('00000000000\0', 136, 'latin1');
  block.write(options.type ?? '0', 156, 'latin1');
  block.write(options.link ?? '', 157, 100, 'utf8');
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}
const fileEntry = (name: string, content: string): Buffer => {
  const data = Buffer.from(content);
  return Buffer.concat([header(name, { size: data.length }), data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
};
const END = Buffer.alloc(1024);

const NODE_APP = {
  'package.json': '{"type":"module"}\n',
  'src/index.js': "import { greet } from './lib/greet.js';\nexport async function handler(body) {\n  return greet(body.toString('utf8'));\n}\n",
  'src/lib/greet.js': "import { readFileSync } from 'node:fs';\nconst greeting = readFileSync(new URL('../../data/greeting.txt', import.meta.url), 'utf8').trim();\nexport const greet = (who) => `${greeting}, ${who} from ${process.cwd()}`;\n",
  'data/greeting.txt': 'hello\n',
};

const PYTHON_APP = {
  'handler.py': 'from pkg.util import shout\n\ndef main(body):\n    try:\n        open("/work/written", "w")\n        writable = "writable"\n    except OSError:\n        writable = "read-only"\n    return shout(body.decode()) + " " + writable\n',
  'pkg/__init__.py': '',
  'pkg/util.py': 'def shout(text):\n    return text.upper() + "!"\n',
};

async function expectRefused(promise: Promise<unknown>, status: number, code: string, entry?: string): Promise<KindlingError> {
  const error = await promise.then(
    () => assert.fail(`expected ${status} ${code}`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof KindlingError, String(error));
  assert.equal(error.status, status, error.message);
  assert.equal(error.code, code, error.message);
  if (entry !== undefined) assert.equal((error.details as { entry?: string } | undefined)?.entry, entry, error.message);
  return error;
}

describe('function bundles (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxBundleBytes: 256 * 1024 });
    client = new Kindling({ url: server.url });
  });
  after(() => server?.stop());

  it('runs a node handler from a bundle of several files, with the archive\'s sha256 on the version', async () => {
    const tar = tarOf(directory(NODE_APP));
    const info = await client.functions.deployBundle('node-app', { runtime: 'node', handler: 'src/index.js:handler' }, tar);
    assert.equal(info.style, 'handler');
    assert.equal(info.bundle?.sha256, createHash('sha256').update(tar).digest('hex'));
    assert.equal(info.bundle?.bytes, tar.length);
    const result = await client.functions.invoke('node-app', 'ada');
    assert.equal(result.exitCode, 0, result.text());
    assert.equal(result.text(), 'hello, ada from /work');
    const versions = await client.functions.versions('node-app');
    assert.equal(versions.at(-1)?.bundle?.sha256, info.bundle?.sha256);
    assert.equal((await client.functions.get('node-app')).bundle?.sha256, info.bundle?.sha256);
  });

  it('runs a python handler that imports a package of its bundle, which it cannot write', async () => {
    await client.functions.deployBundle('py-app', { runtime: 'python', handler: 'handler.py:main' }, tarOf(directory(PYTHON_APP)));
    const result = await client.functions.invoke('py-app', 'hi');
    assert.equal(result.exitCode, 0, result.text());
    assert.equal(result.text(), 'HI! read-only');
  });

  it('runs a command in the bundle\'s directory', async () => {
    const tar = tarOf(directory({ 'run.sh': 'read -r name\necho "$(cat data.txt) $name in $PWD"\n', 'data.txt': 'bundled' }));
    const info = await client.functions.deployBundle('cmd-app', { runtime: 'bash', command: ['bash', 'run.sh'] }, tar);
    assert.equal(info.style, 'command');
    const result = await client.functions.invoke('cmd-app', 'bob\n');
    assert.equal(result.exitCode, 0, result.text());
    assert.equal(result.text(), 'bundled bob in /work\n');
  });

  it('refuses entries that leave the bundle, devices and fifos with 400 BUNDLE_INVALID naming the entry', async () => {
    const spec = { runtime: 'node' as const, handler: 'index.js:handler' };
    const cases: [string, Buffer][] = [
      ['../evil.js', Buffer.concat([fileEntry('index.js', 'export const handler = () => 1;'), fileEntry('../evil.js', 'x'), END])],
      ['/etc/evil', Buffer.concat([fileEntry('/etc/evil', 'x'), END])],
      ['out', Buffer.concat([header('out', { type: '2', link: '/etc' }), END])],
      ['up', Buffer.concat([header('sub/', { type: '5' }), header('up', { type: '2', link: 'sub/../..' }), END])],
      ['pipe', Buffer.concat([header('pipe', { type: '6' }), END])],
      ['tty', Buffer.concat([header('tty', { type: '3' }), END])],
    ];
    for (const [entry, tar] of cases) {
      const error = await expectRefused(client.functions.deployBundle('evil', spec, tar), 400, 'BUNDLE_INVALID', entry);
      assert.ok(error.message.includes(entry), error.message);
    }
    // Nothing was deployed, and nothing was left in the bundle store.
    await expectRefused(client.functions.get('evil'), 404, 'FUNCTION_NOT_FOUND');
    assert.deepEqual(readdirSync(join(server.dataDir, 'bundles')).filter((name) => name.startsWith('.stage-')), []);
  });

  it('refuses a bundle over --max-bundle-bytes with 413, a zip with 415, a spec without its header with 400', async () => {
    const big = tarOf(directory({ 'index.js': 'export const handler = () => 1;', 'blob.bin': 'x'.repeat(300 * 1024) }));
    const tooLarge = await expectRefused(client.functions.deployBundle('big', { runtime: 'node', handler: 'index.js:handler' }, big), 413, 'PAYLOAD_TOO_LARGE');
    assert.match(tooLarge.message, /--max-bundle-bytes/);
    const zip = await fetch(`${server.url}/v1/functions/zipped`, { method: 'PUT', headers: { 'content-type': 'application/zip', 'kindling-function-spec': '{"runtime":"node","handler":"index.js:handler"}' }, body: new Uint8Array(Buffer.from('PK\x03\x04')) });
    assert.equal(zip.status, 415);
    const zipError = ((await zip.json()) as { error: { code: string; message: string } }).error;
    assert.equal(zipError.code, 'UNSUPPORTED_MEDIA_TYPE');
    assert.match(zipError.message, /send a tar/);
    const noSpec = await fetch(`${server.url}/v1/functions/nospec`, { method: 'PUT', headers: { 'content-type': 'application/x-tar' }, body: new Uint8Array(tarOf(directory({ 'a.txt': 'a' }))) });
    assert.equal(noSpec.status, 400);
    assert.match(((await noSpec.json()) as { error: { message: string } }).error.message, /Kindling-Function-Spec/);
  });

  it('refuses a handler file the bundle does not have, and a handler path out of the bundle', async () => {
    // Content of its own (no other function refers to these bytes).
    const tar = tarOf(directory({ ...NODE_APP, 'unique.txt': 'refused deploys' }));
    const missing = await expectRefused(client.functions.deployBundle('missing', { runtime: 'node', handler: 'src/nope.js:handler' }, tar), 400, 'VALIDATION_FAILED');
    assert.match(missing.message, /src\/nope\.js/);
    // No version refers to the unpacked bundle of a refused deploy: it goes.
    const sha = createHash('sha256').update(tar).digest('hex');
    await waitFor(() => !existsSync(join(server.dataDir, 'bundles', sha)), { what: 'the refused bundle to be removed' });
    await expectRefused(client.functions.deployBundle('escape', { runtime: 'node', handler: '../x.js:handler' }, tar), 400, 'VALIDATION_FAILED');
  });

  it('keeps one unpacked copy per content and removes it once no version refers to it', async () => {
    const tar = tarOf(directory({ 'index.mjs': 'export const handler = (b) => "same:" + b;' }));
    const spec = { runtime: 'node' as const, handler: 'index.mjs:handler' };
    const first = await client.functions.deployBundle('same-a', spec, tar);
    const second = await client.functions.deployBundle('same-b', spec, tar);
    const sha = first.bundle!.sha256;
    assert.equal(second.bundle?.sha256, sha);
    const unpacked = join(server.dataDir, 'bundles', sha);
    assert.ok(existsSync(join(unpacked, 'index.mjs')));
    assert.equal((await client.functions.invoke('same-b', '1')).text(), 'same:1');
    await client.functions.delete('same-a');
    // Collections run one after another: once another function's bundle is gone, the one after same-a's delete ran.
    const other = await client.functions.deployBundle('other', spec, tarOf(directory({ 'index.mjs': 'export const handler = () => "other";' })));
    await client.functions.delete('other');
    await waitFor(() => !existsSync(join(server.dataDir, 'bundles', other.bundle!.sha256)), { what: 'the other bundle to be removed' });
    assert.ok(existsSync(unpacked), 'still used by same-b');
    await client.functions.delete('same-b');
    await waitFor(() => !existsSync(unpacked), { what: 'the unused bundle to be removed' });
  });

  it('deploys a directory with kindling deploy --dir, leaving out .git and what .kindlingignore lists', async () => {
    const dir = directory({
      ...NODE_APP,
      '.git/HEAD': 'ref: refs/heads/main\n',
      'secret.env': 'TOKEN=1\n',
      'logs/a.log': 'x\n',
      '.kindlingignore': 'secret.env\n*.log\n',
      'src/list.js': "import { readdirSync } from 'node:fs';\nexport const handler = () => JSON.stringify({ top: readdirSync('/work').sort(), logs: readdirSync('/work/logs') });\n",
    });
    const url = ['--url', server.url];
    const deployed = await execFileAsync('node', [CLI, 'deploy', 'cli-app', '--dir', dir, '--runtime', 'node', '--handler', 'src/list.js:handler', ...url]);
    assert.match(deployed.stdout, /deployed cli-app version 1 \(handler\) bundle sha256:[0-9a-f]{64}/);
    const listed = JSON.parse((await client.functions.invoke('cli-app')).text()) as { top: string[]; logs: string[] };
    assert.deepEqual(listed, { top: ['data', 'logs', 'package.json', 'src'], logs: [] });
    // The same directory again: the same bytes (sorted entries, zeroed times and owners), so the same hash.
    const again = await execFileAsync('node', [CLI, 'deploy', 'cli-app', '--dir', dir, '--runtime', 'node', '--handler', 'src/list.js:handler', '--json', ...url]);
    const versions = await client.functions.versions('cli-app');
    assert.equal((JSON.parse(again.stdout) as { bundle: { sha256: string } }).bundle.sha256, versions[0]!.bundle!.sha256);
    // A bundle refused: the CLI exits non-zero with the server's message.
    const failed = await execFileAsync('node', [CLI, 'deploy', 'cli-bad', '--dir', dir, '--runtime', 'node', '--handler', 'nope.js:handler', ...url]).then(
      () => assert.fail('expected a failure'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /nope\.js/);
  });
});

describe('function bundles (docker executor)', { skip: dockerMissing ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  before(async () => {
    server = await startTestServer({ executor: 'docker' });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    await server?.stop();
    if (server) await waitFor(async () => (await containersOf(server.ownerId)).length === 0, { what: 'the containers to be removed' });
  });

  it('runs a node handler and a command from bundles, read-only at /work', async () => {
    await client.functions.deployBundle('node-app', { runtime: 'node', handler: 'src/index.js:handler' }, tarOf(directory(NODE_APP)));
    const handler = await client.functions.invoke('node-app', 'docker');
    assert.equal(handler.exitCode, 0, handler.text());
    assert.equal(handler.text(), 'hello, docker from /work');
    const tar = tarOf(directory({ 'run.sh': 'cat data.txt; touch /work/x 2>/dev/null && echo writable || echo read-only\n', 'data.txt': 'bundled' }));
    await client.functions.deployBundle('cmd-app', { runtime: 'bash', command: ['bash', 'run.sh'] }, tar);
    const command = await client.functions.invoke('cmd-app');
    assert.equal(command.exitCode, 0, command.text());
    assert.equal(command.text(), 'bundledread-only\n');
  });
});
