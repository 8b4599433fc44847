/**
 * The FaaS blueprint's 12 jobs run by the operator's job runner on real sandboxes (bubblewrap): inputs encoded as a
 * chain caller would (sdk/src/tangle/jobs.ts), outputs decoded from the runner's result, each job checked against what
 * it did in the sandboxes; bad inputs answer error envelopes, and one caller never reaches another's sandboxes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { decodeJobResult, encodeJobInputs, type JobResult } from '@kindling/sdk/tangle';
import { getAddress, toHex, type Address, type Hex } from 'viem';
import { createJobRunner, type JobRunner } from '../src/operator/job-runner.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();

const newCaller = (): Address => getAddress(toHex(randomBytes(20)));

async function readAll(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A tar archive (host GNU tar) of `files` (relative path -> content). */
async function tarOf(files: Record<string, string>): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-jobs-tar-'));
  try {
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), content);
    }
    return execFileSync('tar', ['-C', dir, '--numeric-owner', '-cf', '-', '.']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('operator job runner (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let runner: JobRunner;
  let callIds = 0n;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxSandboxesPerTenant: 20 });
    runner = createJobRunner({ ...server.services, publicUrl: `${server.url}/`, tenantQuotas: { maxMemoryMb: 512 }, maxOutputBytes: 64 * 1024 });
  });
  after(async () => {
    await server?.stop();
  });

  /** Runs job `index` for `caller` with `args` encoded by the job's ABI; answers the decoded result and the call id. */
  async function job(caller: Address, index: number, args: readonly unknown[]): Promise<JobResult & { callId: bigint }> {
    const callId = callIds++;
    const { result } = await runner.run({ serviceId: 7n, callId, jobIndex: index, caller, inputs: encodeJobInputs(index, args) }, new AbortController().signal);
    return { ...decodeJobResult(index, result), callId };
  }
  async function output(caller: Address, index: number, args: readonly unknown[]): Promise<unknown> {
    const answer = await job(caller, index, args);
    assert.equal(answer.kind, 'output', `job ${index} failed: ${JSON.stringify(answer, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`);
    return (answer as { values: readonly unknown[] }).values[0];
  }
  async function failure(caller: Address, index: number, args: readonly unknown[]): Promise<{ code: string; message: string }> {
    const answer = await job(caller, index, args);
    assert.equal(answer.kind, 'error', `job ${index} should have failed, got ${answer.kind}`);
    return answer as { code: string; message: string };
  }
  const text = (hex: unknown): string => Buffer.from((hex as Hex).slice(2), 'hex').toString('utf8');
  const readFile = async (caller: Address, id: string, path: string): Promise<string> => readAll(await server.services.sandboxes.readFile(`chain-${caller.toLowerCase()}`, id, path));
  const advanced = (command: string, mode: string, extra: { checkpointId?: string; branchFrom?: string; timeoutSecs?: bigint; image?: string; memoryMb?: number } = {}): unknown[] => [
    extra.image ?? 'alpine:latest',
    ['sh', '-c', command],
    [],
    '0x',
    mode,
    extra.checkpointId ?? '',
    extra.branchFrom ?? '',
    extra.timeoutSecs ?? 0n,
    extra.memoryMb ?? 0,
  ];

  test('job 0 runs the command with the payload as stdin and the env list, answering its stdout; a non-zero exit is still the output', async () => {
    const caller = newCaller();
    const stdout = await output(caller, 0, ['alpine:latest', ['sh', '-c', 'printf "%s:" "$GREETING"; cat'], ['GREETING=hello'], toHex('world')]);
    assert.equal(text(stdout), 'hello:world');
    assert.equal(text(await output(caller, 0, ['python:3.11', ['python3', '-c', 'import sys; print(sys.version_info[0]); sys.exit(3)'], [], '0x'])), '3\n');
    assert.equal(text(await output(caller, 0, ['kindling/base', ['sh', '-c', 'head -c 100000 /dev/zero | tr "\\0" x'], [], '0x'])).length, 64 * 1024, 'stdout is capped at maxOutputBytes');
    assert.equal(server.services.tenants.get(`chain-${caller.toLowerCase()}`).effectiveQuotas.maxMemoryMb, 512, 'the caller got a tenant with the configured quotas');
  });

  test('job 0 keeps stdout within the caller\'s own output quota when it is below the operator\'s maxOutputBytes', async () => {
    const strict = createJobRunner({ ...server.services, publicUrl: server.url, tenantQuotas: { maxOutputBytes: 5 } });
    const { result } = await strict.run({ serviceId: 7n, callId: callIds++, jobIndex: 0, caller: newCaller(), inputs: encodeJobInputs(0, ['alpine', ['echo', 'hello world'], [], '0x']) }, new AbortController().signal);
    const decoded = decodeJobResult(0, result);
    assert.equal(decoded.kind, 'output', JSON.stringify(decoded));
    assert.equal(text((decoded as { values: readonly unknown[] }).values[0]), 'hello');
    assert.throws(() => createJobRunner({ ...server.services, publicUrl: server.url, maxOutputBytes: -1 }), RangeError);
  });

  test('job 0 refuses an env entry without "=" and an unknown image with the orchestrator\'s codes', async () => {
    const caller = newCaller();
    assert.equal((await failure(caller, 0, ['alpine', ['true'], ['NOEQUALS'], '0x'])).code, 'VALIDATION_FAILED');
    assert.equal((await failure(caller, 0, ['kindling/nope', ['true'], [], '0x'])).code, 'UNKNOWN_IMAGE');
    assert.equal((await failure(caller, 0, ['', ['true'], [], '0x'])).code, 'VALIDATION_FAILED');
  });

  test('job 1: ephemeral and cached run once; a timeout answers EXECUTION_TIMED_OUT; memory above the caller\'s quota is refused', async () => {
    const caller = newCaller();
    assert.equal(text(await output(caller, 1, advanced('echo eph', ''))), 'eph\n');
    assert.equal(text(await output(caller, 1, advanced('echo cached', 'cached'))), 'cached\n');
    const timedOut = await failure(caller, 1, advanced('echo partial; sleep 30', 'ephemeral', { timeoutSecs: 1n }));
    assert.equal(timedOut.code, 'EXECUTION_TIMED_OUT');
    assert.match(timedOut.message, /1000 ms/);
    assert.equal((await failure(caller, 1, advanced('true', 'ephemeral', { memoryMb: 1024 }))).code, 'TENANT_LIMIT_EXCEEDED');
    assert.equal((await failure(caller, 1, advanced('true', 'sideways'))).code, 'VALIDATION_FAILED');
  });

  test('job 1: checkpointed keeps a snapshot named call:N, branched runs on it and leaves nothing, persistent runs in an instance', async () => {
    const caller = newCaller();
    const tenant = `chain-${caller.toLowerCase()}`;
    const checkpoint = await job(caller, 1, advanced('echo state-1 > /work/state; echo made', 'checkpointed'));
    assert.equal(checkpoint.kind, 'output');
    assert.equal(text((checkpoint as { values: readonly unknown[] }).values[0]), 'made\n');
    assert.equal(server.services.sandboxes.listSnapshots(tenant).length, 1, 'the checkpoint is a snapshot');
    const before = server.services.sandboxes.list(tenant).length;
    const branched = await output(caller, 1, advanced('cat /work/state; echo changed > /work/state', 'branched', { branchFrom: `call:${checkpoint.callId}` }));
    assert.equal(text(branched), 'state-1\n');
    assert.equal(server.services.sandboxes.list(tenant).length, before, 'the branch sandbox is gone after the run');
    const restored = (await output(caller, 3, [`call:${checkpoint.callId}`])) as string;
    assert.equal(await readFile(caller, restored, '/work/state'), 'state-1\n', 'the branch did not change the checkpoint');
    assert.equal(text(await output(caller, 1, advanced('echo 2 >> /work/state; cat /work/state', 'persistent', { checkpointId: restored }))), 'state-1\n2\n');
    assert.equal(text(await output(caller, 1, advanced('cat /work/state', 'persistent', { checkpointId: restored }))), 'state-1\n2\n');
    assert.equal((await failure(caller, 1, advanced('true', 'branched', { branchFrom: 'call:999999' }))).code, 'SNAPSHOT_NOT_FOUND');
    assert.equal((await failure(caller, 1, advanced('true', 'persistent'))).code, 'VALIDATION_FAILED');
  });

  test('an aborted job rejects with the abort reason and no result: its command is killed, its instance stays', async () => {
    const caller = newCaller();
    const tenant = `chain-${caller.toLowerCase()}`;
    const instance = (await output(caller, 6, ['', '', 0, 0, 0, false])) as string;
    const abort = new AbortController();
    const startedAt = performance.now();
    const running = runner.run({ serviceId: 7n, callId: callIds++, jobIndex: 1, caller, inputs: encodeJobInputs(1, advanced('touch /work/started; sleep 300', 'persistent', { checkpointId: instance })) }, abort.signal);
    const outcome = running.then(() => 'resolved', (error: unknown) => error);
    await waitFor(async () => (await server.services.sandboxes.listFiles(tenant, instance, '/work')).entries.some((entry) => entry.name === 'started'), 30_000, 'the command to start');
    abort.abort(new Error('operator stopping'));
    assert.equal(((await outcome) as Error).message, 'operator stopping');
    assert.ok(performance.now() - startedAt < 50_000, 'the command was killed, not left to its 60 s default timeout');
    assert.equal(server.services.sandboxes.get(tenant, instance).state, 'running');
    const aborted = new AbortController();
    aborted.abort(new Error('gone before it started'));
    await assert.rejects(runner.run({ serviceId: 7n, callId: callIds++, jobIndex: 0, caller, inputs: encodeJobInputs(0, ['alpine', ['echo', 'x'], [], '0x']) }, aborted.signal), /gone before it started/);
  });

  test('a cancelled checkpointed run leaves neither its sandbox nor a snapshot', async () => {
    const caller = newCaller();
    const tenant = `chain-${caller.toLowerCase()}`;
    const abort = new AbortController();
    const outcome = runner.run({ serviceId: 7n, callId: callIds++, jobIndex: 1, caller, inputs: encodeJobInputs(1, advanced('touch /work/started; sleep 300', 'checkpointed')) }, abort.signal).then(() => 'resolved', (error: unknown) => error);
    await waitFor(async () => {
      const [sandbox] = server.services.sandboxes.list(tenant);
      return sandbox !== undefined && (await server.services.sandboxes.listFiles(tenant, sandbox.id, '/work')).entries.some((entry) => entry.name === 'started');
    }, 30_000, 'the checkpointed command to start');
    abort.abort(new Error('cancelled'));
    assert.equal(((await outcome) as Error).message, 'cancelled');
    assert.deepEqual(server.services.sandboxes.list(tenant), []);
    assert.deepEqual(server.services.sandboxes.listSnapshots(tenant), []);
  });

  test('jobs 2 -> 3 -> 4: a snapshot of an instance, restored and branched, each with the files of the snapshot', async () => {
    const caller = newCaller();
    const instance = (await output(caller, 6, ['', '', 0, 0, 0, false])) as string;
    await output(caller, 1, advanced('echo v1 > /work/file', 'persistent', { checkpointId: instance }));
    const snapshotId = (await output(caller, 2, [instance, 'release', 'the first one'])) as string;
    assert.match(snapshotId, /^snap_/);
    await output(caller, 1, advanced('echo v2 > /work/file', 'persistent', { checkpointId: instance }));
    const restored = (await output(caller, 3, [snapshotId])) as string;
    assert.notEqual(restored, instance);
    assert.equal(await readFile(caller, restored, '/work/file'), 'v1\n');
    const branch = (await output(caller, 4, [snapshotId, 'experiment'])) as string;
    assert.equal(await readFile(caller, branch, '/work/file'), 'v1\n');
    assert.equal(server.services.sandboxes.get(`chain-${caller.toLowerCase()}`, branch).metadata['kindling.branch'], 'experiment');
    assert.equal((await failure(caller, 3, ['snap_doesnotexist'])).code, 'SNAPSHOT_NOT_FOUND');
  });

  test('job 5 merges the /work trees of branches by union, intersection and latest', async () => {
    const caller = newCaller();
    const branchA = (await output(caller, 6, ['', '', 0, 0, 0, false])) as string;
    const branchB = (await output(caller, 6, ['', '', 0, 0, 0, false])) as string;
    await output(caller, 1, advanced('mkdir -p d && echo A > common && echo a > only-a && echo a > d/x && touch -d 2020-01-01 common only-a d/x d', 'persistent', { checkpointId: branchA }));
    await output(caller, 1, advanced('mkdir -p d e && echo B > common && echo b > only-b && echo b > d/x && echo y > d/y && echo z > e/z && touch -d 2024-01-01 common only-b d/x d/y e/z d e', 'persistent', { checkpointId: branchB }));
    const listing = async (id: string): Promise<string> => text(await output(caller, 1, advanced('find . -mindepth 1 | sort | tr "\\n" " "; cat common', 'persistent', { checkpointId: id })));

    const union = (await output(caller, 5, [[branchA, branchB], 'union'])) as string;
    assert.equal(await listing(union), './common ./d ./d/x ./d/y ./e ./e/z ./only-a ./only-b B\n');
    assert.equal(await readFile(caller, union, '/work/d/x'), 'b\n', 'a path in both has the later branch\'s version');
    const unionReversed = (await output(caller, 5, [[branchB, branchA], 'union'])) as string;
    assert.equal(await readFile(caller, unionReversed, '/work/common'), 'A\n');
    // A branch named twice counts once, at its last place.
    const repeated = (await output(caller, 5, [[branchA, branchB, branchA], 'union'])) as string;
    assert.equal(await readFile(caller, repeated, '/work/common'), 'A\n');

    const intersection = (await output(caller, 5, [[branchA, branchB], 'intersection'])) as string;
    assert.equal(await listing(intersection), './common ./d ./d/x B\n');

    for (const order of [[branchA, branchB], [branchB, branchA]]) {
      const latest = (await output(caller, 5, [order, 'latest'])) as string;
      assert.equal(await listing(latest), './common ./d ./d/x ./d/y ./e ./e/z ./only-b B\n', 'the tree of the branch modified last, whatever the order');
    }
    assert.equal(await readFile(caller, branchA, '/work/common'), 'A\n', 'the branches are left as they were');
    assert.equal((await failure(caller, 5, [[branchA], 'octopus'])).code, 'VALIDATION_FAILED');
    assert.equal((await failure(caller, 5, [[], 'union'])).code, 'VALIDATION_FAILED');
  });

  test('jobs 6-9: start, pause, resume and stop an instance; enableSsh is refused', async () => {
    const caller = newCaller();
    const tenant = `chain-${caller.toLowerCase()}`;
    const instance = (await output(caller, 6, ['', 'python:3.12', 1, 128, 1, false])) as string;
    const view = server.services.sandboxes.get(tenant, instance);
    assert.deepEqual([view.image, view.limits.memoryMb, view.limits.cpus, view.limits.diskMb, view.state], ['kindling/python3.13', 128, 1, 1024, 'running']);
    assert.equal(await output(caller, 8, [instance]), 'paused');
    assert.equal(server.services.sandboxes.get(tenant, instance).state, 'paused');
    assert.equal(await output(caller, 9, [instance]), 'running');
    assert.equal(await output(caller, 7, [instance]), true);
    assert.equal((await failure(caller, 8, [instance])).code, 'SANDBOX_NOT_FOUND', 'a stopped instance is gone');
    assert.equal((await failure(caller, 6, ['', '', 0, 0, 0, true])).code, 'SSH_UNSUPPORTED');
  });

  test('job 10 answers the URL of the port route, and it reaches a server in the instance', async () => {
    const caller = newCaller();
    const tenant = `chain-${caller.toLowerCase()}`;
    const instance = (await output(caller, 6, ['', 'python:3', 0, 0, 0, false])) as string;
    await server.services.sandboxes.writeFile(tenant, instance, '/work/index.html', (await import('node:stream')).Readable.from([Buffer.from('served from the instance')]));
    await server.services.sandboxes.start(tenant, instance, { command: ['python3', '-m', 'http.server', '--bind', '127.0.0.1', '8000'], background: true });
    const url = (await output(caller, 10, [instance, 8000, 'http', 'myapp'])) as string;
    assert.equal(url, `${server.url}/v1/sandboxes/${instance}/ports/8000/`);
    let body = '';
    await waitFor(async () => {
      const response = await fetch(`${url}index.html`, { headers: { 'x-kindling-tenant': tenant } }).catch(() => null);
      body = response?.ok ? await response.text() : '';
      return response?.ok === true;
    }, 30_000, 'the instance\'s HTTP server answering through the port route');
    assert.equal(body, 'served from the instance');
    assert.equal((await failure(caller, 10, [instance, 8000, 'udp', ''])).code, 'PROTOCOL_UNSUPPORTED');
    assert.equal((await failure(caller, 10, [instance, 0, 'http', ''])).code, 'VALIDATION_FAILED');
  });

  test('job 11 extracts a tar into the instance and answers the bytes written; an archive leaving the target is refused', async () => {
    const caller = newCaller();
    const instance = (await output(caller, 6, ['', '', 0, 0, 0, false])) as string;
    const archive = await tarOf({ 'hello.txt': 'hello from the chain\n', 'src/main.py': 'print(1)\n' });
    assert.equal(await output(caller, 11, [instance, '/work/app', toHex(archive)]), BigInt('hello from the chain\n'.length + 'print(1)\n'.length));
    assert.equal(await readFile(caller, instance, '/work/app/hello.txt'), 'hello from the chain\n');
    assert.equal(await readFile(caller, instance, '/work/app/src/main.py'), 'print(1)\n');
    const escaping = Buffer.from(archive);
    // The first entry's name ("./") rewritten to "../x" (header checksum fixed): it would leave the target.
    escaping.fill(0, 0, 100);
    escaping.write('../x', 0);
    escaping.fill(' ', 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += escaping[i]!;
    escaping.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    assert.equal((await failure(caller, 11, [instance, '', toHex(escaping)])).code, 'SANDBOX_TAR_INVALID');
  });

  test('bad inputs answer error envelopes: undecodable bytes, an unknown job, another caller\'s instance', async () => {
    const caller = newCaller();
    const undecodable = await runner.run({ serviceId: 7n, callId: 1000n, jobIndex: 0, caller, inputs: '0x1234' }, new AbortController().signal);
    const decoded = decodeJobResult(0, undecodable.result);
    assert.equal(decoded.kind, 'error');
    assert.equal((decoded as { code: string }).code, 'INPUT_UNDECODABLE');
    assert.match((decoded as { message: string }).message, /execute_function\(string image/);
    const unknown = decodeJobResult(0, (await runner.run({ serviceId: 7n, callId: 1001n, jobIndex: 12, caller, inputs: '0x' }, new AbortController().signal)).result);
    assert.equal((unknown as { code: string }).code, 'UNKNOWN_JOB');

    const owner = newCaller();
    const instance = (await output(owner, 6, ['', '', 0, 0, 0, false])) as string;
    const snapshot = (await output(owner, 2, [instance, '', ''])) as string;
    for (const [index, args] of [[1, advanced('true', 'persistent', { checkpointId: instance })], [2, [instance, '', '']], [7, [instance]], [8, [instance]], [10, [instance, 80, 'http', '']], [11, [instance, '', '0x']], [5, [[instance], 'union']]] as const) {
      assert.equal((await failure(caller, index, args)).code, 'SANDBOX_NOT_FOUND', `job ${index} on another caller's instance`);
    }
    assert.equal((await failure(caller, 3, [snapshot])).code, 'SNAPSHOT_NOT_FOUND');
    assert.equal(server.services.sandboxes.get(`chain-${owner.toLowerCase()}`, instance).state, 'running', 'the owner\'s instance is untouched');
  });
});
