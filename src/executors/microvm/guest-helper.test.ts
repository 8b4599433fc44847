/**
 * The guest helper (agent/vm/guest-helper.c) on the host: its relay through the unix-socket mode (the vsock mode runs
 * the same relay on an AF_VSOCK listener, which needs a guest), and the reseed ioctls (root only).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { retryUntil } from '../../../test/helpers/wait.js';
import { buildGuestHelper } from './assets.js';
import { skipOrFail } from '../test-support.js';

let dir = '';
let helper = '';
let buildError: string | null = null;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'kindling-guest-helper-'));
  helper = path.join(dir, 'kindling-guest-helper');
  if (spawnSync('cc', ['--version']).status !== 0) buildError = 'no C compiler (Debian: gcc, libc6-dev)';
  else await buildGuestHelper(helper).catch((error: Error) => (buildError = error.message));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function readSome(stream: NodeJS.ReadableStream, bytes: number): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      if (text.length >= bytes) {
        stream.off('data', onData);
        resolve(text);
      }
    };
    stream.on('data', onData);
  });
}

/** Connects once the helper listens (it creates the socket after it started). */
function connect(file: string): Promise<net.Socket> {
  return retryUntil(
    () =>
      new Promise<net.Socket>((resolve, reject) => {
        const socket = net.connect(file, () => resolve(socket));
        socket.once('error', reject);
      }),
    { what: `${file} to accept` },
  );
}

describe('guest helper', () => {
  it('relays between a connection and stdio, one connection at a time, and accepts the next one after a disconnect', async (t) => {
    if (buildError) return t.skip(skipOrFail('microvm', buildError));
    const socketPath = path.join(dir, 'bridge.sock');
    const child = spawn(helper, ['unix-bridge', socketPath], { stdio: ['pipe', 'pipe', 'pipe'] }) as ChildProcessWithoutNullStreams;
    try {
      const first = await connect(socketPath);
      first.write('to-agent-1');
      assert.equal(await readSome(child.stdout, 10), 'to-agent-1');
      child.stdin.write('to-host-1');
      assert.equal(await readSome(first, 9), 'to-host-1');
      first.destroy(); // the host goes away (or a snapshot restore resets vsock)
      const second = await connect(socketPath);
      second.write('to-agent-2');
      assert.equal(await readSome(child.stdout, 10), 'to-agent-2');
      child.stdin.write('to-host-2');
      assert.equal(await readSome(second, 9), 'to-host-2');
      second.destroy();
      // The agent closing its end ends the helper.
      child.stdin.end();
      const code = await new Promise((resolve) => child.once('exit', resolve));
      assert.equal(code, 0);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('reseed: RNDADDENTROPY + RNDRESEEDCRNG with bytes from stdin (root only)', (t) => {
    if (buildError) return t.skip(skipOrFail('microvm', buildError));
    if (process.getuid?.() !== 0) return t.skip(skipOrFail('microvm', 'the ioctls need CAP_SYS_ADMIN (root)'));
    if (!existsSync('/dev/urandom')) return t.skip('no /dev/urandom');
    const result = spawnSync(helper, ['reseed'], { input: Buffer.alloc(64, 7) });
    assert.equal(result.status, 0, String(result.stderr));
    assert.equal(spawnSync(helper, ['reseed'], { input: '' }).status, 1, 'no bytes is an error');
    assert.equal(spawnSync(helper, ['bogus']).status, 64);
  });
});
