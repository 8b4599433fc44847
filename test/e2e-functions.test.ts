/**
 * Deployed functions end to end through the SDK, the CLI and plain HTTP against a real server on the sandbox
 * executor (bubblewrap). Skips with the reason when the host cannot run the sandbox.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, NotFoundError, RateLimitError, ValidationError } from '@kindling/sdk';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;


const unavailable = await sandboxUnavailableReason();

describe('functions end to end (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let client: Kindling;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    await server?.stop();
  });

  it('deploy -> invoke -> redeploy -> invoke runs the new version (command style, raw bytes)', async () => {
    const first = await client.functions.deploy('upper', { image: 'kindling/base', command: ['tr', 'a-z', 'A-Z'] });
    assert.equal(first.version, 1);
    assert.equal(first.style, 'command');
    const one = await client.functions.invoke('upper', 'hello');
    assert.equal(one.text(), 'HELLO');
    assert.equal(one.exitCode, 0);
    assert.equal(one.version, 1);
    assert.match(one.invocationId, /^ex_/);

    const second = await client.functions.deploy('upper', { runtime: 'python', code: 'import sys\nsys.stdout.write(sys.stdin.read()[::-1])' });
    assert.equal(second.version, 2);
    const two = await client.functions.invoke('upper', 'hello');
    assert.equal(two.text(), 'olleh');
    assert.equal(two.version, 2);
  });

  it('lists the versions kept, oldest first, the latest marked; the CLI prints them; unknown names 404', async () => {
    await client.functions.deploy('versioned', { image: 'kindling/base', command: ['echo', 'one'] });
    await client.functions.deploy('versioned', { runtime: 'python', code: 'print(2)' });
    await client.functions.deploy('versioned', { runtime: 'node', code: 'export const h = (b) => b;', handler: 'h' });
    const versions = await client.functions.versions('versioned');
    assert.deepEqual(
      versions.map((v) => [v.version, v.style, v.latest, v.runtime ?? v.image]),
      [
        [1, 'command', false, 'kindling/base'],
        // Deployed as python and node: a version stores the concrete runtime.
        [2, 'command', false, 'python3.13'],
        [3, 'handler', true, 'node20'],
      ],
    );
    assert.deepEqual(versions[0]!.command, ['echo', 'one'], 'each version carries its own spec');
    assert.ok(versions.every((v, i) => i === 0 || v.createdAtMs >= versions[i - 1]!.createdAtMs));
    const printed = (await execFileAsync('node', [CLI, 'functions', 'versions', 'versioned', '--url', server.url])).stdout;
    assert.match(printed, /^1\s+command\s+kindling\/base/m);
    assert.match(printed, /^3\s+handler\s+node20\s+\S+\s+latest$/m);
    await assert.rejects(client.functions.versions('nope'), (e: unknown) => e instanceof NotFoundError && e.code === 'FUNCTION_NOT_FOUND' && e.status === 404);
  });

  it('takes any content type as raw bytes and returns raw stdout with the x-kindling headers', async () => {
    await client.functions.deploy('cat', { image: 'kindling/base', command: ['sh', '-c', 'cat; exit 3'] });
    const bytes = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
    for (const type of ['application/json', 'text/plain', 'application/x-whatever', 'image/png']) {
      const response = await fetch(`${server.url}/v1/functions/cat/invoke`, { method: 'POST', headers: { 'content-type': type }, body: bytes });
      assert.equal(response.status, 200);
      assert.deepEqual(Buffer.from(await response.arrayBuffer()), bytes);
      assert.equal(response.headers.get('x-kindling-exit-code'), '3');
      assert.equal(response.headers.get('x-kindling-function-version'), '1');
      assert.ok(Number(response.headers.get('x-kindling-duration-ms')) > 0);
      assert.match(response.headers.get('x-kindling-cold-start') ?? '', /^(true|false)$/);
      assert.ok(response.headers.get('x-kindling-invocation-id'));
    }
    // No body at all is an empty stdin.
    const empty = await fetch(`${server.url}/v1/functions/cat/invoke`, { method: 'POST' });
    assert.equal(empty.status, 200);
    assert.equal((await empty.arrayBuffer()).byteLength, 0);
  });

  it('lists, gets and deletes; unknown names are 404 and bad names 400; other routes keep their JSON parser', async () => {
    await client.functions.deploy('listed', { runtime: 'bash', code: 'echo hi' });
    const names = (await client.functions.list()).map((f) => f.name);
    assert.ok(names.includes('listed'));
    assert.equal((await client.functions.get('listed')).runtime, 'bash');
    await client.functions.delete('listed');
    await assert.rejects(client.functions.get('listed'), NotFoundError);
    await assert.rejects(client.functions.invoke('listed'), NotFoundError);
    await assert.rejects(client.functions.delete('listed'), NotFoundError);
    await assert.rejects(client.functions.deploy('Bad_Name', { runtime: 'bash', code: 'x' }), ValidationError);
    await assert.rejects(client.functions.deploy('x', { runtime: 'bash', code: 'x', colour: 'blue' } as never), ValidationError);
    await assert.rejects(client.functions.deploy('x', { image: 'kindling/nope', command: ['true'] }), (e: { code: string }) => e.code === 'UNKNOWN_IMAGE');
    await assert.rejects(client.functions.deploy('x', { runtime: 'bash', code: 'x', handler: 'main' }), (e: { code: string }) => e.code === 'VALIDATION_FAILED');
    const response = await fetch(`${server.url}/v1/functions/nothing/invoke`, { method: 'POST', body: 'x' });
    assert.equal(response.status, 404);
    assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'FUNCTION_NOT_FOUND');
    const notJson = await fetch(`${server.url}/v1/functions/x`, { method: 'PUT', headers: { 'content-type': 'text/xml' }, body: '<x/>' });
    assert.equal(notJson.status, 415);
  });

  it('a command function honours its maxConcurrency and maxQueued (429 beyond)', async () => {
    await client.functions.deploy('one-at-a-time', { image: 'kindling/base', command: ['sh', '-c', 'sleep 0.5; echo done'], maxConcurrency: 1, maxQueued: 1 });
    const outcomes = await Promise.allSettled(Array.from({ length: 4 }, () => client.functions.invoke('one-at-a-time')));
    assert.equal(outcomes.filter((outcome) => outcome.status === 'fulfilled').length, 2);
    for (const outcome of outcomes) if (outcome.status === 'rejected') assert.ok(outcome.reason instanceof RateLimitError);
  });

  it('the CLI deploys, invokes with --data, lists and deletes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-cli-'));
    try {
      await writeFile(join(dir, 'main.py'), 'import sys\nprint(len(sys.stdin.buffer.read()))\n');
      await writeFile(join(dir, 'input.bin'), Buffer.alloc(1000, 7));
      const url = ['--url', server.url];
      assert.match((await execFileAsync('node', [CLI, 'deploy', 'counter', '--runtime', 'python', '--file', join(dir, 'main.py'), ...url])).stdout, /deployed counter version 1/);
      assert.equal((await execFileAsync('node', [CLI, 'invoke', 'counter', '--data', `@${join(dir, 'input.bin')}`, ...url])).stdout, '1000\n');
      assert.equal((await execFileAsync('node', [CLI, 'invoke', 'counter', '--data', 'abc', ...url])).stdout, '3\n');
      assert.match((await execFileAsync('node', [CLI, 'functions', 'list', ...url])).stdout, /counter\s+1\s+command\s+python/);
      assert.match((await execFileAsync('node', [CLI, 'deploy', 'sh-fn', '--image', 'kindling/base', ...url, '--', 'sh', '-c', 'exit 4'])).stdout, /deployed sh-fn version 1/);
      await assert.rejects(execFileAsync('node', [CLI, 'invoke', 'sh-fn', ...url]), (e: { code: number }) => e.code === 4);
      assert.match((await execFileAsync('node', [CLI, 'functions', 'delete', 'counter', ...url])).stdout, /deleted counter/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('functions survive a restart', { skip: unavailable ?? false }, () => {
  it('keeps definitions and versions in the data dir', async () => {
    const first = await startTestServer({ executor: 'sandbox' });
    const dataDir = first.dataDir;
    try {
      const client = new Kindling({ url: first.url });
      await client.functions.deploy('keep', { runtime: 'bash', code: 'echo v1' });
      await client.functions.deploy('keep', { runtime: 'bash', code: 'echo v2' });
    } finally {
      await first.close();
    }
    const second = await startTestServer({ executor: 'sandbox', dataDir });
    try {
      const client = new Kindling({ url: second.url });
      const info = await client.functions.get('keep');
      assert.equal(info.version, 2);
      assert.equal((await client.functions.invoke('keep')).text(), 'v2\n');
    } finally {
      await second.stop();
    }
  });
});
