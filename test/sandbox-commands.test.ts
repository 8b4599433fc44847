/**
 * Commands of persistent sandboxes on the sandbox executor (real bubblewrap), through the TypeScript SDK against a
 * started server: background commands with handles (live logs, late followers, kill of a process tree, bounded
 * output, the bounded list) and foreground commands streamed as SSE.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Kindling, NotFoundError, type CommandHandle } from '@kindling/sdk';
import { DEFAULT_SUPERVISOR_PATH } from '../src/executors/sandbox/persistent.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const ADMIN = 'admin-key-for-sandbox-commands-test-0123';

/** Host pids whose command line is exactly `marker` (e.g. "sleep 51234"). */
function processesWith(marker: string): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\s*(\d+) (.*)$/.exec(line))
    .filter((match) => match !== null && match[2]!.trim() === marker)
    .map((match) => Number(match![1]));
}

const marker = (base: number): string => `sleep ${base}${Math.floor(Math.random() * 1000) + 1000}`;

describe('sandbox commands (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let k: Kindling;
  let key: string;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    key = (await admin.tenants.create('sbx-cmds')).apiKey;
    k = new Kindling({ url: server.url, apiKey: key });
  });
  after(async () => {
    await server?.stop();
  });

  test("a background command's logs stream live while it runs; a late follower gets what was kept; exit ends them", async () => {
    const sb = await k.sandboxes.create({ runtime: 'bash' });
    try {
      // The command prints, then waits for a file the test writes only after it saw the first line live.
      const seen: string[] = [];
      const handle: CommandHandle = await sb.commands.run(['sh', '-c', 'echo first; echo warn >&2; while [ ! -f /tmp/go ]; do sleep 0.02; done; echo second; exit 3'], {
        background: true,
        onStdout: (data) => seen.push(data),
      });
      assert.match(handle.id, /^cmd_/);
      assert.ok(typeof handle.pid === 'number' && handle.pid > 0, `pid ${handle.pid}`);
      assert.equal(handle.info.state, 'running');
      await waitFor(async () => seen.join('').includes('first\n'), 10_000, 'the first line arrives while the command runs');
      assert.equal((await sb.commands.connect(handle.id)).info.state, 'running');
      assert.ok((await sb.commands.list()).some((c) => c.id === handle.id && c.state === 'running'));

      // A second follower joining late gets the output so far.
      const late: string[] = [];
      const lateDone = k.sandboxes.commandLogs(sb.id, handle.id, { onStdout: (d) => late.push(`out:${d}`), onStderr: (d) => late.push(`err:${d}`) });
      await waitFor(async () => late.join('').includes('out:first'), 10_000, 'the late follower got the kept output');
      assert.ok(late.join('').includes('err:warn'));

      await sb.commands.run(['touch', '/tmp/go']);
      const result = await handle.wait();
      assert.deepEqual([result.state, result.exitCode, result.killed], ['exited', 3, false]);
      assert.equal(result.stdout, 'first\nsecond\n');
      assert.equal(result.stderr, 'warn\n');
      assert.equal(seen.join(''), 'first\nsecond\n');
      const final = await lateDone;
      assert.equal(final.exitCode, 3);
      assert.ok(late.join('').endsWith('out:second\n'));
      // Finished: its logs answer at once with what was kept.
      const again: string[] = [];
      assert.equal((await k.sandboxes.commandLogs(sb.id, handle.id, { onStdout: (d) => again.push(d) })).exitCode, 3);
      assert.equal(again.join(''), 'first\nsecond\n');
      assert.equal((await k.sandboxes.getCommand(sb.id, handle.id)).endedAt !== null, true);
      await assert.rejects(k.sandboxes.getCommand(sb.id, 'cmd_nope'), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_COMMAND_NOT_FOUND');
    } finally {
      await sb.kill();
    }
  });

  test('kill of a background command kills its children and leaves other commands alive', async () => {
    const sb = await k.sandboxes.create({ runtime: 'bash' });
    const [victim, survivor] = [marker(5), marker(6)];
    try {
      const doomed = await sb.commands.run(['sh', '-c', `${victim} & ${victim} & echo started; wait`], { background: true });
      const other = await sb.commands.run(['sh', '-c', `${survivor}`], { background: true });
      await waitFor(async () => processesWith(victim).length === 2 && processesWith(survivor).length === 1, 10_000, 'both commands run');
      const killed = await doomed.kill();
      assert.deepEqual([killed.state, killed.killed, killed.exitCode, killed.signal], ['exited', true, 137, 'SIGKILL']);
      assert.deepEqual(processesWith(victim), [], 'the children of the killed command are gone');
      assert.equal(processesWith(survivor).length, 1, 'the other command lives on');
      assert.equal((await other.refresh()).state, 'running');
      assert.equal((await sb.commands.kill(doomed.id)).exitCode, 137, 'kill is idempotent');
      assert.equal((await sb.commands.run(['echo', 'ok'])).stdout, 'ok\n', 'the sandbox lives on');
      // A background timeout kills it the same way.
      const timed = await sb.commands.run(['sleep', '30'], { background: true, timeoutMs: 200 });
      const ended = await timed.wait();
      assert.deepEqual([ended.timedOut, ended.exitCode], [true, 137]);
    } finally {
      await sb.kill();
    }
    assert.deepEqual(processesWith(survivor), [], 'deleting the sandbox ends its background commands');
  });

  test('the output of a background command is kept bounded (the newest outputBytes), and the list is bounded', async () => {
    const sb = await k.sandboxes.create({ runtime: 'bash' });
    try {
      const big = await sb.commands.run(['sh', '-c', 'i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done'], { background: true, outputBytes: 1000 });
      const result = await big.wait();
      assert.equal(result.exitCode, 0);
      const info = await big.refresh();
      assert.ok(info.droppedBytes > 10_000, `dropped ${info.droppedBytes}`);
      const kept: string[] = [];
      await k.sandboxes.commandLogs(sb.id, big.id, { onStdout: (d) => kept.push(d) });
      const text = kept.join('');
      assert.ok(text.length <= 1000, `kept ${text.length} bytes`);
      assert.ok(text.endsWith('line 1999\n'), 'the newest output is kept');
      assert.ok(!text.includes('line 1\n'), 'the oldest output was dropped');
      await assert.rejects(sb.commands.run(['true'], { background: true, outputBytes: 2 * 1024 * 1024 }), (error: unknown) => (error as { code?: string }).code === 'LIMIT_OUT_OF_RANGE');

      // At most 16 finished ones are listed (the oldest go first), running ones always.
      const handles: CommandHandle[] = [];
      for (let i = 0; i < 18; i++) handles.push(await sb.commands.run(['true'], { background: true }));
      for (const handle of handles) await handle.wait().catch(() => undefined);
      const running = await sb.commands.run(['sleep', '30'], { background: true });
      await waitFor(async () => (await sb.commands.list()).filter((c) => c.state === 'exited').length === 16, 10_000, 'finished ones pruned to 16');
      const listed = await sb.commands.list();
      assert.equal(listed[0]!.id, running.id, 'running ones first');
      assert.equal(listed.some((c) => c.id === big.id), false, 'the oldest finished one is forgotten');
      await running.kill();
    } finally {
      await sb.kill();
    }
  });

  test('a foreground command streams stdout/stderr as SSE, then exit; stdin as text or bytes', async () => {
    const sb = await k.sandboxes.create({ runtime: 'bash' });
    try {
      const response = await fetch(`${server.url}/v1/sandboxes/${sb.id}/commands`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ command: ['sh', '-c', 'echo out; sleep 0.1; echo err >&2; exit 4'] }),
      });
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
      const events = [...(await response.text()).matchAll(/event: (\w+)\ndata: (.*)\n/g)].map((m) => [m[1], m[2]]);
      assert.deepEqual(events.slice(0, 2), [['stdout', 'out'], ['stderr', 'err']]);
      assert.equal(events[events.length - 1]![0], 'exit');
      assert.equal((JSON.parse(events[events.length - 1]![1]!) as { exitCode: number }).exitCode, 4);
      // Through the SDK: callbacks get the chunks as they come, while the command still runs.
      const chunks: string[] = [];
      const running = sb.commands.run(['sh', '-c', 'echo one; while [ ! -f /tmp/next ]; do sleep 0.02; done; echo two >&2; exit 4'], { onStdout: (d) => chunks.push(`out:${d}`), onStderr: (d) => chunks.push(`err:${d}`) });
      await waitFor(async () => chunks.includes('out:one\n'), 10_000, 'the first line streams before the command ends');
      await sb.commands.run(['touch', '/tmp/next']);
      const result = await running;
      assert.deepEqual([result.exitCode, result.stdout, result.stderr], [4, 'one\n', 'two\n']);
      assert.deepEqual(chunks, ['out:one\n', 'err:two\n']);
      assert.equal((await sb.commands.run(['cat'], { stdin: new Uint8Array([104, 105, 0, 10]) })).stdout, 'hi\0\n');
      assert.equal((await sb.commands.run(['cat'], { stdin: 'text', onStdout: () => {} })).stdout, 'text');
    } finally {
      await sb.kill();
    }
  });
  // The sh supervisor (where native/kindling-supervisor is not built) runs commands as background jobs of sh.
  const shSupervisor = existsSync(DEFAULT_SUPERVISOR_PATH) ? false : 'native/kindling-supervisor is not built: the sh supervisor leaves SIGINT and SIGQUIT ignored';
  test('a command starts with no signal ignored or blocked: SIGINT from another command ends it (130), as SIGQUIT would', { skip: shSupervisor }, async () => {
    const sb = await k.sandboxes.create({ runtime: 'bash' });
    try {
      // A background job of sh runs with SIGINT and SIGQUIT ignored, which its program would inherit.
      const status = (await sb.commands.run(['grep', '-E', '^Sig(Ign|Blk):', '/proc/self/status'])).stdout;
      assert.match(status, /^SigIgn:\s+0+$/m, status);
      assert.match(status, /^SigBlk:\s+0+$/m, status);
      const sleeper = await sb.commands.run(['sleep', '30'], { background: true });
      assert.equal((await sb.commands.run(['sh', '-c', `kill -INT ${sleeper.pid}`])).exitCode, 0);
      const ended = await sleeper.wait();
      assert.deepEqual([ended.exitCode, ended.killed], [130, false]);
      // The environment and work dir a command gets: the sandbox's, its own on top, the work dir asked.
      const env = await sb.commands.run(['sh', '-c', 'echo "$A|$B|$(pwd)|$PWD"'], { env: { B: 'two words', A: "it's" }, workdir: '/tmp' });
      assert.equal(env.stdout, "it's|two words|/tmp|/tmp\n");
      const missing = await sb.commands.run(['no-such-program-here']);
      assert.equal(missing.exitCode, 127);
      assert.match(missing.stderr, /no-such-program-here/);
    } finally {
      await sb.kill();
    }
  });
});
