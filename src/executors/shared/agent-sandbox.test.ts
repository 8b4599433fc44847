import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AGENT_SOCKET } from '../../../agent/files.js';
import { testSpec } from '../conformance.js';
import type { Execution } from '../executor.js';
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
