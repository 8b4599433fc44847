/**
 * TypeScript without a build step, end to end on a real server: the `deno` and `bun` runtimes (their own Linux builds
 * in kindling/deno and kindling/bun) run `.ts` code with types stripped, serve TypeScript handlers from warm sandboxes
 * through the node agent, load a bundle's own `.ts` modules and, on the sandbox executor, a bundle's npm dependencies
 * (built once by npm for both: one layer), and specialise generic sandboxes with a `handler.ts`. On the sandbox
 * executor, and on docker where the engine is reachable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { npmProject, registryReach } from './helpers/npm-builds.js';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const RUNTIMES = ['deno', 'bun'] as const;
/** Which runtime runs the code, and its major version: Deno 2, Bun 1. */
const WHO = "const who: string = typeof Deno !== 'undefined' ? `deno ${Deno.version.deno.split('.')[0]}` : `bun ${Bun.version.split('.')[0]}`;";
const MAJOR = { deno: 'deno 2', bun: 'bun 1' } as const;
/** Valid TypeScript handler: an interface, annotations, a generic helper. */
const HANDLER = `${WHO}
interface Input { name?: string }
function parse<T>(body: Uint8Array): T { return (body.length ? JSON.parse(new TextDecoder().decode(body)) : {}) as T; }
let calls: number = 0;
export async function handler(body: Uint8Array): Promise<string> {
  const input = parse<Input>(body);
  calls += 1;
  return JSON.stringify({ hello: input.name ?? 'world', who, calls });
}
`;
const tar = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
const directory = directoryMaker('kindling-ts-');

for (const executor of ['sandbox', 'docker'] as const) {
  const unavailable = executor === 'sandbox' ? await sandboxUnavailableReason() : await dockerUnavailableReason();
  describe(`TypeScript runtimes deno and bun (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      server = await startTestServer({ executor, ...(executor === 'sandbox' ? await registryReach() : {}) });
      client = new Kindling({ url: server.url });
    });
    after(() => server?.stop());

    it('runs TypeScript code as it is: types stripped, not checked; stderr and the exit code as for any runtime', async () => {
      for (const runtime of RUNTIMES) {
        const result = await client.run(runtime, `${WHO}\nconst wrong: number = 'not a number' as unknown as number;\nconsole.log(who, typeof wrong);\nconsole.error('to stderr');\n`);
        assert.equal(result.exitCode, 0, `${runtime}: ${result.stderr}`);
        assert.equal(result.stdout.trim(), `${MAJOR[runtime]} string`, runtime);
        assert.equal(result.stderr.trim(), 'to stderr', runtime);
        // A throw is the user's failure: a non-zero exit code in the result, not a platform error.
        const thrown = await client.run(runtime, "throw new Error('user failure');");
        assert.notEqual(thrown.exitCode, 0, runtime);
        assert.match(thrown.stderr, /user failure/, runtime);
      }
    });

    it('serves a TypeScript handler from a warm sandbox: module state survives between calls', async () => {
      for (const runtime of RUNTIMES) {
        const name = `ts-${runtime}-${executor}`;
        await client.functions.deploy(name, { runtime, handler: 'handler', code: HANDLER });
        const first = await client.functions.invoke(name, JSON.stringify({ name: 'kin' }));
        assert.deepEqual(JSON.parse(first.text()), { hello: 'kin', who: MAJOR[runtime], calls: 1 }, runtime);
        const second = await client.functions.invoke(name, '');
        assert.deepEqual(JSON.parse(second.text()), { hello: 'world', who: MAJOR[runtime], calls: 2 }, runtime);
        assert.equal(second.coldStart, false, `${runtime}: the second call was not warm`);
      }
    });

    it('a handler that throws fails its invocation with the error, and the next call is served', async () => {
      for (const runtime of RUNTIMES) {
        const name = `ts-throw-${runtime}-${executor}`;
        await client.functions.deploy(name, {
          runtime,
          handler: 'handler',
          code: "export function handler(body: Uint8Array): string {\n  if (body.length === 0) throw new TypeError('empty body');\n  return `got ${body.length}`;\n}\n",
        });
        const failed = await client.functions.invoke(name, '').then(
          (response) => response,
          (error: unknown) => error as Error,
        );
        assert.match(failed instanceof Error ? failed.message : failed.text(), /empty body/, runtime);
        assert.equal((await client.functions.invoke(name, 'abc')).text(), 'got 3', runtime);
      }
    });

    it("a bundle's handler in src/index.ts imports the bundle's own TypeScript modules", async () => {
      const dir = directory({
        'src/util.ts': 'export const greet = (name: string): string => `hi ${name}`;\n',
        'src/index.ts': "import { greet } from './util.ts';\nexport async function handler(body: Uint8Array): Promise<string> {\n  return greet(new TextDecoder().decode(body));\n}\n",
      });
      for (const runtime of RUNTIMES) {
        const name = `tsb-${runtime}-${executor}`;
        await client.functions.deployBundle(name, { runtime, handler: 'src/index.ts:handler' }, tar(dir));
        assert.equal((await client.functions.invoke(name, runtime)).text(), `hi ${runtime}`);
      }
    });

    it('a persistent sandbox of deno or bun runs its commands with the runtime on PATH', async () => {
      for (const runtime of RUNTIMES) {
        const sandbox = await client.sandboxes.create({ runtime });
        try {
          await sandbox.files.write('/work/a.ts', "const n: number = 6 * 7;\nconsole.log(n);\n");
          const result = await sandbox.commands.run(runtime === 'deno' ? ['deno', 'run', '--quiet', 'a.ts'] : ['bun', 'a.ts']);
          assert.equal(result.exitCode, 0, `${runtime}: ${result.stderr}`);
          assert.equal(result.stdout.trim(), '42', runtime);
        } finally {
          await sandbox.kill();
        }
      }
    });

    it("a deno and a bun bundle's npm dependencies are installed once (one layer for both) and load", { skip: executor === 'docker' ? 'dependency builds are tested on the sandbox executor' : false }, async () => {
      const dir = npmProject(directory({ 'index.ts': "import ms from 'ms';\nexport function handler(body: Uint8Array): string {\n  return String(ms(new TextDecoder().decode(body)));\n}\n" }), { ms: '2.1.3' });
      const onBun = await client.functions.deployBundle('ts-deps-bun', { runtime: 'bun', handler: 'index.ts:handler' }, tar(dir), { requestTimeoutMs: 0 });
      assert.equal(onBun.layer?.reused, false, 'a dependency layer was built');
      assert.equal((await client.functions.invoke('ts-deps-bun', '2s')).text(), '2000');
      const onDeno = await client.functions.deployBundle('ts-deps-deno', { runtime: 'deno', handler: 'index.ts:handler' }, tar(dir), { requestTimeoutMs: 0 });
      assert.equal(onDeno.layer?.sha256, onBun.layer?.sha256, 'deno and bun share the layer of one lockfile');
      assert.equal(onDeno.layer?.reused, true);
      assert.equal((await client.functions.invoke('ts-deps-deno', '1m')).text(), '60000');
    });
  });
}

const sandboxUnavailable = await sandboxUnavailableReason();
describe('generic sandboxes of deno and bun are specialised with a handler.ts (sandbox executor)', { skip: sandboxUnavailable ?? false }, () => {
  const genericStats = (server: TestServer): { idle: number; hits: number } => (server.handlers.stats() as { generic: { idle: number; hits: number } }).generic;

  it('the first cold start of a runtime leaves a generic sandbox, which the next function of that runtime loads its TypeScript into', async () => {
    const server = await startTestServer({ executor: 'sandbox', functionPools: { genericPerShape: 1 } });
    const client = new Kindling({ url: server.url });
    try {
      // node and python generic sandboxes are warmed at start-up; deno's and bun's once each runtime is used.
      await waitFor(async () => genericStats(server).idle === 2, 30_000, 'the node and python generic sandboxes');
      for (const [index, runtime] of RUNTIMES.entries()) {
        await client.functions.deploy(`gen-a-${runtime}`, { runtime, handler: 'handler', code: HANDLER });
        await client.functions.invoke(`gen-a-${runtime}`, '');
        await waitFor(async () => genericStats(server).idle === 3 + index, 30_000, `a generic ${runtime} sandbox`);
        const hits = genericStats(server).hits;
        await client.functions.deploy(`gen-b-${runtime}`, { runtime, handler: 'handler', code: HANDLER.replace("'world'", "'generic'") });
        const answer = await client.functions.invoke(`gen-b-${runtime}`, '');
        assert.deepEqual(JSON.parse(answer.text()), { hello: 'generic', who: MAJOR[runtime], calls: 1 }, runtime);
        assert.equal(genericStats(server).hits, hits + 1, `${runtime}: the cold start did not use the generic sandbox`);
        // Replenished for the next function of the runtime.
        await waitFor(async () => genericStats(server).idle === 3 + index, 30_000, `the generic ${runtime} pool to refill`);
      }
    } finally {
      await server.stop();
    }
  });
});
