/**
 * The runtimes of Debian trixie beside bookworm's, end to end on a real server: `node20` and `python3.13` run code,
 * handler functions and persistent sandboxes in their own images (kindling/node20, kindling/python3.13), `node18` and
 * `python3.11` name bookworm's, `node` and `python` mean the newest and a deployed version or a sandbox stores the
 * concrete runtime; a node20 bundle's npm dependencies are built in the
 * node20 image (the real registry); the original's image names `node:20*` / `python:3.13*` pick them. On the sandbox
 * executor, and on docker where the engine is reachable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling, KindlingError } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { npmProject, registryReach } from './helpers/npm-builds.js';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const NODE_VERSION = 'console.log(process.versions.node.split(".")[0])';
const PYTHON_VERSION = 'import sys; print("%d.%d" % sys.version_info[:2])';

const directory = directoryMaker('kindling-runtimes-');

for (const executor of ['sandbox', 'docker'] as const) {
  const unavailable = executor === 'sandbox' ? await sandboxUnavailableReason() : await dockerUnavailableReason();
  describe(`current runtimes (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      server = await startTestServer({ executor, ...(executor === 'sandbox' ? await registryReach() : {}) });
      client = new Kindling({ url: server.url });
    });
    after(() => server?.stop());

    it('runs code on node20/node and python3.13/python, and on bookworm\'s node18 and python3.11', async () => {
      const expected: [string, string, string][] = [
        ['node20', NODE_VERSION, '20'],
        ['node18', NODE_VERSION, '18'],
        ['node', NODE_VERSION, '20'],
        ['python3.13', PYTHON_VERSION, '3.13'],
        ['python3.11', PYTHON_VERSION, '3.11'],
        ['python', PYTHON_VERSION, '3.13'],
      ];
      for (const [runtime, code, version] of expected) {
        const result = await client.run(runtime, code);
        assert.equal(result.exitCode, 0, `${runtime}: ${result.stderr}`);
        assert.equal(result.stdout.trim(), version, runtime);
      }
      // A name that is a property of every object is no runtime: a 400 naming the runtimes, not a 500.
      for (const name of ['constructor', '__proto__', 'toString']) {
        const refused = await client.run(name, 'x').then(
          () => assert.fail(`${name} ran`),
          (error: unknown) => error as KindlingError,
        );
        assert.equal(refused.status, 400, `${name}: ${refused.message}`);
        assert.equal(refused.code, 'UNKNOWN_RUNTIME');
        assert.match(refused.message, /node20/);
      }
    });

    it('serves handler functions on node20 (an ES module) and python3.13 from warm sandboxes of their images', async () => {
      await client.functions.deploy(`n20-${executor}`, { runtime: 'node20', handler: 'handler', code: 'export async function handler(body) {\n  return `${process.versions.node.split(".")[0]}:${body.toString()}`;\n}\n' });
      await client.functions.deploy(`p313-${executor}`, { runtime: 'python3.13', handler: 'handler', code: 'import sys\ndef handler(body):\n    return "%d.%d:%s" % (sys.version_info[0], sys.version_info[1], body.decode())\n' });
      for (const round of ['a', 'b']) {
        assert.equal((await client.functions.invoke(`n20-${executor}`, round)).text(), `20:${round}`);
        assert.equal((await client.functions.invoke(`p313-${executor}`, round)).text(), `3.13:${round}`);
      }
      // The second round was warm: the same sandbox answered.
      const warm = await client.functions.invoke(`n20-${executor}`, 'c');
      assert.equal(warm.coldStart, false);
    });

    it('the original gateway\'s image names node:20-alpine and python:3.13-slim run on node20 and python3.13', async () => {
      for (const [image, code, version] of [['node:20-alpine', NODE_VERSION, '20'], ['node:18', NODE_VERSION, '18'], ['python:3.13-slim', PYTHON_VERSION, '3.13']] as const) {
        // The original's body: a shell command line.
        const command = image.startsWith('node') ? `node -e '${code}'` : `python3 -c '${code}'`;
        const response = await fetch(`${server.url}/api/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image, command }) });
        const body = (await response.json()) as { stdout?: string; exit_code?: number };
        assert.equal(response.status, 200, JSON.stringify(body));
        assert.equal(body.stdout?.trim(), version, image);
      }
    });

    it('a function deployed as node or python stores node20 or python3.13; a sandbox of python stores python3.13', async () => {
      const node = await client.functions.deploy(`newest-node-${executor}`, { runtime: 'node', handler: 'handler', code: 'export const handler = () => process.versions.node.split(".")[0];\n' });
      assert.equal(node.runtime, 'node20');
      assert.equal((await client.functions.invoke(`newest-node-${executor}`, '')).text(), '20');
      const python = await client.functions.deploy(`newest-py-${executor}`, { runtime: 'python', code: PYTHON_VERSION });
      assert.equal(python.runtime, 'python3.13');
      assert.equal((await client.functions.invoke(`newest-py-${executor}`, '')).text().trim(), '3.13');
      const sandbox = await client.sandboxes.create({ runtime: 'python' });
      try {
        assert.equal(sandbox.info.runtime, 'python3.13');
        assert.equal((await sandbox.commands.run(['python3', '-c', PYTHON_VERSION])).stdout.trim(), '3.13');
      } finally {
        await sandbox.kill();
      }
    });

    it('a persistent sandbox of node20 keeps its runtime across commands', async () => {
      const sandbox = await client.sandboxes.create({ runtime: 'node20' });
      try {
        const result = await sandbox.commands.run(['node', '-e', NODE_VERSION]);
        assert.equal(result.stdout.trim(), '20');
      } finally {
        await sandbox.kill();
      }
    });

    it('a node20 bundle\'s npm dependencies are built in the node20 image and load there', { skip: executor === 'docker' ? 'dependency builds are tested on the sandbox executor' : false }, async () => {
      const dir = npmProject(directory({ 'index.js': "import ms from 'ms';\nexport async function handler(body) {\n  return `${process.versions.node.split('.')[0]}:${ms(body.toString())}`;\n}\n" }), { ms: '2.1.3' });
      const deployed = await client.functions.deployBundle('n20-deps', { runtime: 'node20', handler: 'index.js:handler' }, execFileSync('tar', ['-cf', '-', '-C', dir, '.']), { requestTimeoutMs: 0 });
      assert.equal(deployed.layer?.reused, false, 'a dependency layer was built');
      assert.equal((await client.functions.invoke('n20-deps', '2s')).text(), '20:2000');
      // The same lockfile on node 18 is another layer (the image is part of its key), built in node 18's image.
      const node18 = await client.functions.deployBundle('n18-deps', { runtime: 'node18', handler: 'index.js:handler' }, execFileSync('tar', ['-cf', '-', '-C', dir, '.']), { requestTimeoutMs: 0 });
      assert.notEqual(node18.layer?.sha256, deployed.layer?.sha256);
      assert.equal((await client.functions.invoke('n18-deps', '1s')).text(), '18:1000');
    });
  });
}
