/**
 * How a started port relay's answer is read (relayConnection): the helper's report line decides between a connection,
 * SANDBOX_PORT_UNREACHABLE and EXECUTOR_FAILED, even when its end is reported before the line was read (a child's
 * 'exit' can come before its stderr's data; the microVM agent's end likewise). The real helper is covered by the
 * executor conformance suite; this holds the ordering.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { isKindlingError } from '../../core/errors.js';
import { relayConnection, type RelayProcess } from './ports.js';

const options = { idleTimeoutMs: 5_000, connectTimeoutMs: 1_000 };

function fakeRelay(): { relay: RelayProcess; stderr: PassThrough; end: () => void; killed: () => boolean } {
  const stderr = new PassThrough();
  const listeners: Array<(error?: Error) => void> = [];
  let killed = false;
  const relay: RelayProcess = {
    stdin: new PassThrough(),
    stdout: new PassThrough(),
    stderr,
    kill: () => { killed = true; },
    onEnd: (listener) => { listeners.push(listener); },
  };
  return { relay, stderr, end: () => { for (const listener of listeners) listener(); }, killed: () => killed };
}

test('a relay that ends before its "refused" line is read still answers SANDBOX_PORT_UNREACHABLE', async () => {
  const fake = fakeRelay();
  const connecting = relayConnection(fake.relay, 'sb-1', 8081, options);
  fake.end();
  fake.stderr.end('refused\n');
  await assert.rejects(connecting, (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_PORT_UNREACHABLE' && /nothing listens/.test(error.message));
});

test('a relay that ends without a line is EXECUTOR_FAILED, once its stderr ended', async () => {
  const fake = fakeRelay();
  const connecting = relayConnection(fake.relay, 'sb-1', 8081, options);
  fake.end();
  fake.stderr.end();
  await assert.rejects(connecting, (error: unknown) => isKindlingError(error) && error.code === 'EXECUTOR_FAILED' && /the helper ended/.test(error.message));
});

test('a relay whose stderr never ends after its end is answered within a bounded time', async () => {
  const fake = fakeRelay();
  const connecting = relayConnection(fake.relay, 'sb-1', 8081, options);
  fake.end();
  await assert.rejects(connecting, (error: unknown) => isKindlingError(error) && error.code === 'EXECUTOR_FAILED');
});

test('"ok" gives the connection; a "timeout" line is SANDBOX_PORT_UNREACHABLE and kills the relay', async () => {
  const ok = fakeRelay();
  const connecting = relayConnection(ok.relay, 'sb-1', 8080, options);
  ok.stderr.write('ok\n');
  const stream = await connecting;
  assert.equal(typeof stream.pipe, 'function');
  stream.on('error', () => {}); // destroying a Duplex.from reports an AbortError
  stream.destroy();
  const late = fakeRelay();
  const refused = relayConnection(late.relay, 'sb-1', 8080, options);
  late.stderr.write('timeout\n');
  await assert.rejects(refused, (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_PORT_UNREACHABLE' && /did not accept within 1000 ms/.test(error.message));
  assert.equal(late.killed(), true);
});
