import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import net from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AGENT_SOCKET } from '../../../agent/files.js';
import { AGENT_VERSION, FrameDecoder, FrameType, encodeFrame } from '../../../agent/protocol.js';
import { testSpec } from '../conformance.js';
import type { Execution, ExitInfo } from '../executor.js';
import { startAgentSandbox } from './agent-sandbox.js';
import { skipOrFail } from '../test-support.js';

const execFileAsync = promisify(execFile);
const SANDBOX_GID = 65533;

/** Connects to a unix socket as another uid/gid (no supplementary groups); answers "connected" or the error code. */
async function connectAs(socketPath: string, uid: number, gid: number): Promise<string> {
  const script = `require('net').connect(process.argv[1]).on('connect', () => { process.stdout.write('connected'); process.exit(0); }).on('error', (e) => { process.stdout.write(e.code); process.exit(0); });`;
  const { stdout } = await execFileAsync('/usr/bin/setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', process.execPath, '-e', script, socketPath], { env: {}, cwd: '/' });
  return stdout;
}

describe('warm sandbox agent socket', () => {
  it('only root and the sandbox gid can connect: another user of the host cannot take the agent\'s place', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip(skipOrFail('sandbox', 'needs root (chown, and setpriv to act as other users)'));
      return;
    }
    const base = await mkdtemp(join(tmpdir(), 'kindling-agent-sock-'));
    await chmod(base, 0o711);
    const agentsDir = join(base, 'agents');
    const seen: Record<string, string> = {};
    try {
      const start = async (spec: { agentDir?: string }): Promise<Execution> => {
        const socketPath = join(spec.agentDir!, AGENT_SOCKET);
        seen.other = await connectAs(socketPath, 65532, 65532);
        seen.sandbox = await connectAs(socketPath, 65531, SANDBOX_GID);
        throw new Error('stopped by the test');
      };
      await assert.rejects(startAgentSandbox(start, testSpec({ command: ['true'] }), { agentsDir, sandboxGid: SANDBOX_GID, readyTimeoutMs: 20_000 }), /stopped by the test/);
      assert.equal(seen.other, 'EACCES', 'another uid reached the agent socket');
      assert.equal(seen.sandbox, 'connected', 'the sandbox gid could not reach its socket');
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
});

/**
 * An execution whose "agent" is this test: it connects to the socket, says HELLO and answers every INVOKE at once;
 * the cgroup's CPU counter is a number the test moves, and every read of it is counted.
 */
async function fakeAgentStart(counter: { cpuMs: number; reads: number }): Promise<{ start: (spec: { agentDir?: string }) => Promise<Execution>; base: string }> {
  const base = await mkdtemp(join(tmpdir(), 'kindling-agent-reuse-'));
  await chmod(base, 0o711);
  const start = async (spec: { agentDir?: string }): Promise<Execution> => {
    const socket = net.connect(join(spec.agentDir!, AGENT_SOCKET));
    await once(socket, 'connect');
    socket.write(encodeFrame(FrameType.HELLO, 0, JSON.stringify({ version: AGENT_VERSION, runtime: 'node', pid: process.pid })));
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === FrameType.BODY_END) socket.write(encodeFrame(FrameType.RESULT_END, frame.id, JSON.stringify({ cpuMs: 0, maxRssBytes: 0 })));
      }
    });
    let exit: (info: ExitInfo) => void = () => undefined;
    const exited = new Promise<ExitInfo>((resolve) => (exit = resolve));
    return {
      stdin: null,
      stdout: new PassThrough(),
      stderr: new PassThrough(),
      coldStart: true,
      wait: () => exited,
      kill: () => {
        socket.destroy();
        exit({ exitCode: 137, signal: 'SIGKILL', oomKilled: false });
      },
      usageNow: () => {
        counter.reads++;
        return { cpuMs: counter.cpuMs, memoryPeakBytes: 0 };
      },
      disposed: exited.then(() => undefined),
    };
  };
  return { start, base };
}

describe('warm sandbox CPU readings', () => {
  it('a call right after another starts from its end reading; after a pause it reads the counter again', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip(skipOrFail('sandbox', 'needs root (the agent socket is chowned to the sandbox gid)'));
      return;
    }
    const counter = { cpuMs: 100, reads: 0 };
    const { start, base } = await fakeAgentStart(counter);
    // A window of 2 s (the default is 50 ms): "right after" must hold on a loaded machine too.
    const sandbox = await startAgentSandbox(start, testSpec({ command: ['true'] }), { agentsDir: join(base, 'agents'), sandboxGid: SANDBOX_GID, readyTimeoutMs: 20_000, reuseCpuReadingMs: 2000 });
    try {
      const call = async (): Promise<number | null> => (await sandbox.invoke(Buffer.from('{}'), { timeoutMs: 5000, outputBytes: 1024 })).usage?.cpuMs ?? null;
      const readsAtStart = counter.reads;
      counter.cpuMs = 110;
      assert.equal(await call(), 0, 'the first call starts from a fresh reading: the 10 ms before it are idle usage');
      assert.equal(counter.reads - readsAtStart, 2, 'the first call reads the counter at its start and its end');
      // Back to back (well within the window): the start reuses the end reading of the call before.
      counter.cpuMs = 115;
      const before = counter.reads;
      assert.equal(await call(), 5, 'the CPU between the two calls is the second call\'s');
      assert.equal(counter.reads - before, 1, 'only the end of the second call is read');
      // After a pause past the reuse window: read again, and what ran meanwhile is idle usage, not the call's.
      await new Promise((resolve) => setTimeout(resolve, 2100));
      counter.cpuMs = 130;
      const later = counter.reads;
      assert.equal(await call(), 0);
      assert.equal(counter.reads - later, 2);
    } finally {
      await sandbox.destroy();
      await rm(base, { recursive: true, force: true });
    }
  });
});
