/**
 * Hibernation through the API on every executor that hosts persistent sandboxes, with real sandboxes: where the
 * executor keeps processes (gvisor: runsc checkpoint/restore; microvm: QEMU migration to a file) a process started
 * before `POST /v1/sandboxes/ID/hibernate` goes on after the wake with the state it held in memory; where it keeps
 * files only (docker) the answer says so, the files stay and the next command runs on them. Memory snapshots (gvisor,
 * microvm): a fork goes on with the processes of its snapshot.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Kindling, type Sandbox } from '@kindling/sdk';
import { dockerUnavailableReason, gvisorUnavailableReason, microvmUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const ADMIN = 'admin-key-for-sandbox-hibernate-processes-0123456789';

/** A shell loop counting in a variable (its state is in memory), writing each value to /work/counter. */
const COUNTER = ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /work/counter.new && mv /work/counter.new /work/counter; sleep 0.2; done >/dev/null 2>&1 &'];

async function counter(sandbox: Sandbox): Promise<number> {
  const result = await sandbox.commands.run(['sh', '-c', 'cat /work/counter 2>/dev/null || echo 0']);
  return Number(result.stdout.trim());
}

/** Resolves with the counter once it reached `atLeast`. */
async function counterAtLeast(sandbox: Sandbox, atLeast: number, timeoutMs: number): Promise<number> {
  let value = 0;
  await waitFor(async () => (value = await counter(sandbox)) >= atLeast, timeoutMs, `the counter in ${sandbox.id} to reach ${atLeast}`);
  return value;
}

const cases = [
  { executor: 'gvisor' as const, unavailable: await gvisorUnavailableReason(), processesKept: true, timeoutMs: 120_000 },
  // A boot under TCG takes 5 s on an idle host, much more on a busy one.
  { executor: 'microvm' as const, unavailable: await microvmUnavailableReason(), processesKept: true, timeoutMs: 300_000 },
  { executor: 'docker' as const, unavailable: await dockerUnavailableReason(), processesKept: false, timeoutMs: 120_000 },
];

for (const { executor, unavailable, processesKept, timeoutMs } of cases) {
  describe(`hibernation through the API (${executor} executor)`, { skip: unavailable ?? false, timeout: timeoutMs * 3 }, () => {
    let server: TestServer;
    let client: Kindling;

    before(async () => {
      server = await startTestServer({ executor, adminKey: ADMIN });
      const { apiKey } = await new Kindling({ url: server.url, apiKey: ADMIN }).tenants.create(`hibernate-${executor}`);
      client = new Kindling({ url: server.url, apiKey, timeoutMs });
    });
    after(async () => {
      await server?.stop();
    });

    test(processesKept ? 'a process started before hibernation goes on after the wake, with its memory' : 'hibernation keeps the files, says the processes ended, and the next command runs on the files', { timeout: timeoutMs }, async () => {
      const sandbox = await client.sandboxes.create({ image: 'kindling/base', executor, limits: { memoryMb: 256, diskMb: 64 } });
      try {
        assert.equal((await sandbox.commands.run(COUNTER)).exitCode, 0);
        const before = await counterAtLeast(sandbox, 3, timeoutMs / 2);

        const info = await sandbox.hibernate();
        assert.equal(info.state, 'hibernated');
        assert.equal(info.hibernation?.processesKept, processesKept);
        assert.equal((await client.sandboxes.get(sandbox.id)).state, 'hibernated', 'the state is kept');
        assert.deepEqual((await client.sandboxes.list({ state: 'hibernated' })).map((s) => s.id), [sandbox.id]);

        // The next command wakes it; the file written before hibernation is there either way.
        const woken = await counter(sandbox);
        assert.ok(woken >= before, `the counter file survives (${woken} >= ${before})`);
        assert.equal((await client.sandboxes.get(sandbox.id)).state, 'running');
        if (processesKept) {
          // The same loop goes on from its value in memory: a new process tree would have no counter at all.
          const later = await counterAtLeast(sandbox, woken + 3, timeoutMs / 2);
          assert.ok(later > woken);
        } else {
          const ps = await sandbox.commands.run(['sh', '-c', 'for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr "\\0" " "; echo; done']);
          assert.doesNotMatch(ps.stdout, /while :/, 'the loop ended with the processes');
          assert.equal(await counter(sandbox), woken, 'nothing counts any more');
        }
      } finally {
        await sandbox.kill();
      }
    });

    if (executor === 'microvm') {
      test('a background command running at hibernation is still listed after the wake: its logs go on from the restored process and DELETE kills it', { timeout: timeoutMs }, async () => {
        const sandbox = await client.sandboxes.create({ image: 'kindling/base', executor, limits: { memoryMb: 256, diskMb: 64 } });
        try {
          const ticking = await sandbox.commands.run(['sh', '-c', 'i=0; while :; do i=$((i+1)); echo tick $i; echo $i > /work/ticks; sleep 0.2; done'], { background: true });
          const ticks = async (): Promise<number> => Number((await sandbox.commands.run(['sh', '-c', 'cat /work/ticks 2>/dev/null || echo 0'])).stdout.trim());
          let before = 0;
          await waitFor(async () => (before = await ticks()) >= 3, timeoutMs / 2, 'the background command to tick');
          assert.equal((await sandbox.hibernate()).hibernation?.processesKept, true);
          // Woken by a command; the background command is still there, running, with the same id.
          assert.ok((await ticks()) >= before);
          const listed = (await sandbox.commands.list()).find((command) => command.id === ticking.id);
          assert.equal(listed?.state, 'running', `the background command is listed as running after the wake: ${JSON.stringify(listed)}`);
          // Its logs go on: lines the restored process printed after the wake reach a follower.
          let text = '';
          const following = client.sandboxes.commandLogs(sandbox.id, ticking.id, { onStdout: (data) => (text += data) });
          const after = before + 5;
          await waitFor(async () => new RegExp(`tick ${after}\\n`).test(text), timeoutMs / 2, `tick ${after} in the logs after the wake (got ${JSON.stringify(text.slice(-200))})`);
          // DELETE kills it in the restored VM: it ends as killed, the follower gets the exit, the loop is gone.
          const killed = await ticking.kill();
          assert.equal(killed.state, 'exited');
          assert.equal(killed.killed, true);
          assert.equal((await following).state, 'exited');
          const ps = await sandbox.commands.run(['sh', '-c', 'for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr "\\0" " "; echo; done']);
          assert.doesNotMatch(ps.stdout, /echo tick/, 'the loop was killed');
        } finally {
          await sandbox.kill();
        }
      });
    }

    if (executor === 'gvisor') {
      test('a command whose output streams to the server cannot be saved: hibernate is 409 SANDBOX_COMMANDS_RUNNING and nothing is lost; once it is killed, hibernate works', { timeout: timeoutMs }, async () => {
        const sandbox = await client.sandboxes.create({ image: 'kindling/base', executor, limits: { memoryMb: 256, diskMb: 64 } });
        try {
          const streaming = await sandbox.commands.run(['sh', '-c', 'while :; do date +%s%N > /work/beat; sleep 0.2; done'], { background: true });
          await waitFor(async () => (await sandbox.commands.run(['cat', '/work/beat'])).exitCode === 0, timeoutMs / 2, 'the streaming command to run');
          await assert.rejects(sandbox.hibernate(), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_COMMANDS_RUNNING' && /kill them/.test((error as Error).message));
          await assert.rejects(sandbox.snapshot(), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_COMMANDS_RUNNING');
          // Nothing was lost: the sandbox runs, the command is listed and still running.
          assert.equal((await client.sandboxes.get(sandbox.id)).state, 'running');
          assert.equal((await sandbox.commands.list()).find((c) => c.id === streaming.id)?.state, 'running');
          const beat = (await sandbox.commands.run(['cat', '/work/beat'])).stdout;
          await waitFor(async () => (await sandbox.commands.run(['cat', '/work/beat'])).stdout !== beat, timeoutMs / 2, 'the command to go on');
          assert.equal(await client.sandboxes.listSnapshots({ sandboxId: sandbox.id }).then((list) => list.length), 0, 'no snapshot was recorded');
          await streaming.kill();
          const info = await sandbox.hibernate();
          assert.equal(info.hibernation?.processesKept, true);
          assert.equal((await sandbox.commands.run(['cat', '/work/beat'])).exitCode, 0, 'it wakes');
        } finally {
          await sandbox.kill();
        }
      });
    }

    if (processesKept) {
      test('a memory snapshot says so, and a fork goes on with the processes of the snapshot', { timeout: timeoutMs }, async () => {
        const sandbox = await client.sandboxes.create({ image: 'kindling/base', executor, limits: { memoryMb: 256, diskMb: 64 } });
        const forks: Sandbox[] = [];
        try {
          assert.equal((await sandbox.commands.run(COUNTER)).exitCode, 0);
          const atSnapshot = await counterAtLeast(sandbox, 3, timeoutMs / 2);
          forks.push(...(await sandbox.fork(1)));
          const snapshots = await client.sandboxes.listSnapshots({ sandboxId: sandbox.id });
          assert.equal(snapshots.length, 1);
          assert.equal(snapshots[0]!.memory, true);
          const fork = forks[0]!;
          const inFork = await counterAtLeast(fork, atSnapshot + 3, timeoutMs / 2);
          assert.ok(inFork > atSnapshot, 'the fork counts on from the snapshot');
          // The source goes on too, and the two no longer share their files.
          await counterAtLeast(sandbox, atSnapshot + 3, timeoutMs / 2);
          assert.equal((await fork.commands.run(['sh', '-c', 'echo fork-only > /work/mine'])).exitCode, 0);
          assert.notEqual((await sandbox.commands.run(['cat', '/work/mine'])).exitCode, 0);
          if (executor === 'microvm') {
            // A microvm fork is the snapshot's VM going on: it cannot be given another memory size.
            await assert.rejects(
              client.sandboxes.create({ fromSnapshot: snapshots[0]!.id, limits: { memoryMb: 512 } }),
              (error: unknown) => (error as { code?: string }).code === 'CONFLICTING_FIELDS' && (error as { status?: number }).status === 400 && /memoryMb/.test((error as Error).message),
            );
          }
        } finally {
          for (const fork of forks) await fork.kill();
          await sandbox.kill();
          for (const snapshot of await client.sandboxes.listSnapshots()) await client.sandboxes.deleteSnapshot(snapshot.id);
        }
      });
    }
  });
}
