/**
 * Bundles on the microvm executor (real QEMU VMs): a bundle's directory and its npm dependencies (a layer) become
 * read-only ext4 disks, made once per directory and attached to every VM that runs the function; the guest agent mounts
 * them at /work and /work/node_modules. Two functions with the same lockfile share one dependency disk. A program
 * compiled at deploy is a disk too, at /run/kindling-bin (a microVM's root has no /kindling-bin). Handlers stay on
 * executors with warm sandboxes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling, type KindlingError } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { npmProject, registryReach } from './helpers/npm-builds.js';
import { microvmUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const directory = directoryMaker('kindling-microvm-bundle-');
const tarOf = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);

const unavailable = (await microvmUnavailableReason()) ?? (await sandboxUnavailableReason());
describe('bundles on the microvm executor', { skip: unavailable ?? false, timeout: 900_000 }, () => {
  let server: TestServer;
  let client: Kindling;
  const bindDisks = async (): Promise<string[]> => (await readdir(join(server.dataDir, 'run', 'microvm', 'binds')).catch(() => [] as string[])).filter((name) => name.endsWith('.ext4'));

  before(async () => {
    // Dependency builds run on the sandbox executor (they need egress); the functions run in VMs.
    server = await startTestServer({ executor: 'sandbox', enableExecutors: ['microvm'], ...(await registryReach()) });
    client = new Kindling({ url: server.url, timeoutMs: 600_000 });
  });
  after(async () => {
    if (!server) return;
    const vmsDir = join(server.dataDir, 'run', 'microvm', 'vms');
    await server.stop();
    assert.deepEqual(await readdir(vmsDir).catch(() => []), [], 'VM directories left behind');
  });

  it("a command bundle runs in its read-only directory: its files are there, writes to it fail, /tmp is the run's own", async () => {
    const bundle = directory({
      'main.py': [
        'import sys, pathlib',
        'from lib.words import count',
        'try:',
        '    open("new.txt", "w")',
        '    wrote = "wrote"',
        'except OSError:',
        '    wrote = "refused"',
        'pathlib.Path("/tmp/scratch").write_text("ok")',
        'print(sys.stdin.read().strip(), count(), wrote, pathlib.Path.cwd())',
      ].join('\n'),
      'lib/__init__.py': '',
      'lib/words.py': 'import pathlib\n\ndef count():\n    return len(pathlib.Path("data/words.txt").read_text().split())\n',
      'data/words.txt': 'one two three\n',
    });
    const info = await client.functions.deployBundle('vm-bundle', { runtime: 'python', command: ['python3', 'main.py'], executor: 'microvm' }, tarOf(bundle));
    assert.equal(info.executor, 'microvm');
    const first = await client.functions.invoke('vm-bundle', 'hi');
    assert.equal(first.exitCode, 0, first.text());
    assert.equal(first.text(), 'hi 3 refused /work\n');
    // A second call runs in another VM (restored from the bundle's snapshot, or prewarmed): same disk, same answer.
    const second = await client.functions.invoke('vm-bundle', 'again');
    assert.equal(second.text(), 'again 3 refused /work\n');
    assert.equal((await bindDisks()).length, 1, 'one disk for the bundle, made once');
  });

  it("a node bundle's npm dependencies are a second disk at /work/node_modules, shared by bundles with the same lockfile", async () => {
    const first = npmProject(directory({ 'index.js': 'import ms from "ms";\nprocess.stdout.write(String(ms("2h")));\n' }), { ms: '2.1.3' });
    const before = new Set(await bindDisks());
    const info = await client.functions.deployBundle('vm-npm', { runtime: 'node', command: ['node', 'index.js'], executor: 'microvm' }, tarOf(first), { requestTimeoutMs: 600_000 });
    assert.ok(info.layer !== undefined && info.layer.kind === undefined, JSON.stringify(info)); // an npm layer (kind absent)
    const answer = await client.functions.invoke('vm-npm', '');
    assert.equal(answer.exitCode, 0, answer.text());
    assert.equal(answer.text(), '7200000');
    const made = (await bindDisks()).filter((name) => !before.has(name));
    assert.equal(made.length, 2, `the bundle's disk and the layer's: ${made.join(', ')}`);

    // Another bundle (other code) with the same lockfile: its own bundle disk, the same dependency disk.
    const second = npmProject(directory({ 'index.js': 'import ms from "ms";\nprocess.stdout.write(ms(60000));\n' }), { ms: '2.1.3' });
    const other = await client.functions.deployBundle('vm-npm-2', { runtime: 'node', command: ['node', 'index.js'], executor: 'microvm' }, tarOf(second), { requestTimeoutMs: 600_000 });
    assert.equal(other.layer?.sha256, info.layer.sha256, 'the same layer');
    assert.equal((await client.functions.invoke('vm-npm-2', '')).text(), '1m');
    const added = (await bindDisks()).filter((name) => !before.has(name));
    assert.equal(added.length, 3, `one more disk, for the second bundle only: ${added.join(', ')}`);
  });

  it('a handler bundle is refused: microvm keeps no warm sandboxes', async () => {
    const bundle = directory({ 'h.py': 'def main(body):\n    return body\n' });
    const refused = await client.functions.deployBundle('vm-handler', { runtime: 'python', handler: 'h.py:main', executor: 'microvm' }, tarOf(bundle)).then(
      () => assert.fail('the deploy was accepted'),
      (error: KindlingError) => error,
    );
    assert.equal(refused.status, 400);
    assert.equal(refused.code, 'HANDLERS_UNSUPPORTED');
  });

  it('a go bundle is compiled at deploy and its calls run the program from its disk, at /run/kindling-bin', async () => {
    const bundle = directory({
      'go.mod': 'module app\n\ngo 1.19\n',
      'main.go': 'package main\n\nimport (\n\t"fmt"\n\t"io"\n\t"os"\n)\n\nfunc main() {\n\tbody, _ := io.ReadAll(os.Stdin)\n\texe, _ := os.Executable()\n\tfmt.Printf("go %s from %s\\n", body, exe)\n}\n',
    });
    const info = await client.functions.deployBundle('vm-go', { runtime: 'go', executor: 'microvm' }, tarOf(bundle), { requestTimeoutMs: 600_000 });
    assert.equal(info.layer?.kind, 'compile');
    const answer = await client.functions.invoke('vm-go', 'hi');
    assert.equal(answer.exitCode, 0, answer.text());
    assert.equal(answer.text(), 'go hi from /run/kindling-bin/main\n');
  });
});
