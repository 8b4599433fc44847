/**
 * The microVM executor end to end: real QEMU VMs (TCG here, KVM where it works) booted from the project's own kernel,
 * initramfs and image ext4, driven through the SDK against a started server: bash, python and node code with correct
 * stdout, stderr and exit codes, stdin, a timeout that kills the VM, and nothing left behind.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { microvmUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await microvmUnavailableReason();

describe('microvm executor end to end (QEMU)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let client: Kindling;

  before(async () => {
    server = await startTestServer({ executor: 'microvm' });
    client = new Kindling({ url: server.url, timeoutMs: 180_000 });
  });
  after(async () => {
    if (!server) return;
    const executor = server.executors.get('microvm');
    const vmsDir = join(server.dataDir, 'run', 'microvm', 'vms');
    await server.stop();
    assert.deepEqual(await readdir(vmsDir).catch(() => []), [], 'VM directories left behind');
    assert.equal(executor ? (await executor.reap()).removed : 0, 0);
  });

  it('runs bash, python and node with the real exit codes and separate streams', async () => {
    const bash = await client.run('bash', 'echo "bash $((6 * 7))"; echo oops >&2; exit 4');
    assert.deepEqual([bash.stdout, bash.stderr, bash.exitCode, bash.executor], ['bash 42\n', 'oops\n', 4, 'microvm']);
    const python = await client.run('python', 'import sys\nprint("python", sum(range(10)))\nsys.exit(0)');
    assert.deepEqual([python.stdout, python.exitCode], ['python 45\n', 0]);
    const node = await client.run('node', 'console.log("node", [1, 2, 3].map((x) => x * 2).join(","))');
    assert.deepEqual([node.stdout, node.exitCode], ['node 2,4,6\n', 0]);
  });

  it('round-trips 256 KiB of random bytes through stdin byte-exact', async () => {
    const input = randomBytes(256 * 1024);
    const result = await client.execute({ image: 'kindling/base', command: ['cat'], stdin: new Uint8Array(input), outputEncoding: 'base64' });
    const digest = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');
    assert.equal(digest(Buffer.from(result.stdout, 'base64')), digest(input));
  });

  it('kills the VM at the timeout and reports it', async () => {
    const startedAt = Date.now();
    const result = await client.runCommand('kindling/base', ['sleep', '100'], { timeoutMs: 1500 });
    assert.equal(result.timedOut, true);
    assert.ok(Date.now() - startedAt < 30_000, `took ${Date.now() - startedAt} ms`);
    const next = await client.runCommand('kindling/base', ['echo', 'next']);
    assert.equal(next.stdout, 'next\n');
  });
});
