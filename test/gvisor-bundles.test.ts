/**
 * Bundles and programs compiled at deploy on the gvisor executor (runsc): the bundle's directory is bound read-only at
 * /work through the gofer, as on the sandbox executor, and a go function's program (a layer) at /kindling-bin; nothing
 * is copied per run. Handlers stay on executors with warm sandboxes: a handler bundle for gvisor is refused.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling, type KindlingError } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { npmProject, registryReach } from './helpers/npm-builds.js';
import { gvisorUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const directory = directoryMaker('kindling-gvisor-bundle-');
const tarOf = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);

const unavailable = await gvisorUnavailableReason();
describe('bundles on the gvisor executor', { skip: unavailable ?? false, timeout: 300_000 }, () => {
  let server: TestServer;
  let client: Kindling;
  before(async () => {
    // Builds run on the sandbox executor (they need egress and binds); the functions run on gvisor.
    server = await startTestServer({ executor: 'sandbox', enableExecutors: ['gvisor'], ...(await registryReach()) });
    client = new Kindling({ url: server.url, timeoutMs: 120_000 });
  });
  after(() => server?.stop());

  it("a command bundle runs in its read-only directory: its files are there, writes to it fail, /tmp is the run's own", async () => {
    const bundle = directory({
      'main.py': [
        'import sys, pathlib',
        'data = pathlib.Path("data/words.txt").read_text().split()',
        'try:',
        '    open("new.txt", "w")',
        '    wrote = "wrote"',
        'except OSError:',
        '    wrote = "refused"',
        'pathlib.Path("/tmp/scratch").write_text("ok")',
        'print(sys.stdin.read().strip(), len(data), wrote, pathlib.Path.cwd())',
      ].join('\n'),
      'data/words.txt': 'one two three\n',
    });
    const info = await client.functions.deployBundle('gv-bundle', { runtime: 'python', command: ['python3', 'main.py'], executor: 'gvisor' }, tarOf(bundle));
    assert.equal(info.executor, 'gvisor');
    const answer = await client.functions.invoke('gv-bundle', 'hi');
    assert.equal(answer.exitCode, 0, answer.text());
    assert.equal(answer.text(), 'hi 3 refused /work\n');
  });

  it("a node bundle's npm dependencies (a layer) are bound inside its directory, at /work/node_modules", async () => {
    const bundle = npmProject(directory({ 'index.js': 'import ms from "ms";\nprocess.stdout.write(String(ms("2h")));\n' }), { ms: '2.1.3' });
    const info = await client.functions.deployBundle('gv-npm', { runtime: 'node', command: ['node', 'index.js'], executor: 'gvisor' }, tarOf(bundle), { requestTimeoutMs: 300_000 });
    assert.ok(info.layer !== undefined && info.layer.kind === undefined, JSON.stringify(info)); // an npm layer (kind absent)
    assert.equal((await client.functions.invoke('gv-npm', '')).text(), '7200000');
  });

  it('a go function is compiled at deploy and its calls exec the bound program', async () => {
    const code = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("compiled for gvisor") }\n';
    const info = await client.functions.deploy('gv-go', { runtime: 'go', code, executor: 'gvisor' });
    assert.equal(info.layer?.kind, 'compile');
    const answer = await client.functions.invoke('gv-go', '');
    assert.equal(answer.text(), 'compiled for gvisor\n');
  });

  it('a handler bundle is refused: gvisor keeps no warm sandboxes', async () => {
    const bundle = directory({ 'h.py': 'def main(body):\n    return body\n' });
    const refused = await client.functions.deployBundle('gv-handler', { runtime: 'python', handler: 'h.py:main', executor: 'gvisor' }, tarOf(bundle)).then(
      () => assert.fail('the deploy was accepted'),
      (error: KindlingError) => error,
    );
    assert.equal(refused.status, 400);
    assert.equal(refused.code, 'HANDLERS_UNSUPPORTED');
  });
});
