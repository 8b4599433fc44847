import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { FunctionVersion } from '../store/store.js';
import { remotable, versionKey } from './remote-runs.js';
import { nodeIdOf } from './roles.js';
import { chunks, decodeFrame, encodeFrame, fromWireError, parseIdleUsage, toWireError } from './run-protocol.js';
import { clusterConfig } from '../cli/serve.js';

const version = (spec: FunctionVersion['spec']): FunctionVersion => ({ tenant: 'acme', name: 'fn', version: 3, spec, createdAtMs: 0 });

describe('cluster run protocol', () => {
  it('a frame carries its metadata and raw bytes unchanged, and a cut frame is refused', () => {
    const body = Buffer.from([0, 1, 2, 255]);
    const stderr = Buffer.from('oops');
    const frame = encodeFrame({ ok: true, bodyBytes: body.length }, body, stderr);
    const { meta, rest } = decodeFrame<{ ok: boolean; bodyBytes: number }>(frame);
    assert.deepEqual(meta, { ok: true, bodyBytes: 4 });
    assert.deepEqual([...rest.subarray(0, 4)], [0, 1, 2, 255]);
    assert.equal(rest.subarray(4).toString(), 'oops');
    assert.throws(() => decodeFrame(frame.subarray(0, 10)), /runs past its end/);
    assert.throws(() => decodeFrame(new Uint8Array(2)), /shorter than its length prefix/);
  });

  it('chunks cover the frame in order, none larger than asked', () => {
    const frame = Buffer.alloc(2500, 7);
    const pieces = chunks(frame, 1000);
    assert.deepEqual(pieces.map((piece) => piece.length), [1000, 1000, 500]);
    assert.deepEqual(Buffer.concat(pieces), frame);
  });

  it('errors keep their code, details and Retry-After across the wire; others become EXECUTOR_FAILED', () => {
    const wire = toWireError(new KindlingError('TENANT_CONCURRENCY_LIMIT', 'busy', { details: { limit: 2 }, retryAfterSeconds: 3 }));
    const back = fromWireError(JSON.parse(JSON.stringify(wire)), 'wk-a');
    assert.deepEqual([back.code, back.statusCode, back.message, back.retryAfterSeconds, back.details], ['TENANT_CONCURRENCY_LIMIT', 429, 'busy', 3, { limit: 2, node: 'wk-a' }]);
    assert.equal(toWireError(new Error('disk gone')).code, 'EXECUTOR_FAILED');
    assert.equal(fromWireError({ code: 'SOMETHING_NEWER', message: 'x' }, 'wk-a').code, 'EXECUTOR_FAILED');
  });

  it('handler and command functions without files of their own server go to workers; raw streams do not', () => {
    const handler = { runtime: 'node' as const, handler: 'handler', code: 'exports.handler = () => 1' };
    assert.equal(remotable(version(handler), {}), true);
    assert.equal(remotable(version({ image: 'kindling/base', command: ['cat'] }), {}), true, 'a command function on a built-in image');
    assert.equal(remotable(version({ image: 'kindling/python:latest', command: ['python3'] }), {}), true);
    assert.equal(remotable(version({ runtime: 'python', code: 'print(1)' }), {}), true, 'runtime code, run as a command');
    assert.equal(remotable(version({ image: 'kindling/mytools', command: ['cat'] }), {}), false, "a short name that may be a tenant's custom image");
    assert.equal(remotable(version({ image: 'kindling/u.acme.tools', command: ['cat'] }), {}), false);
    assert.equal(remotable(version({ image: 'kindling/base', command: ['cat'], aptImage: 'kindling/u.acme.pkgs-1' }), {}), false, 'an image built for its packages');
    assert.equal(remotable(version({ image: 'kindling/base', command: ['cat'] }), { io: {} }), false, 'a raw stream passes through the gateway');
    // A bundle and a layer: the worker fetches them from the cluster's object store.
    assert.equal(remotable(version({ ...handler, bundle: { sha256: 'a', bytes: 1, entries: 1 } }), {}), true);
    assert.equal(remotable(version({ ...handler, layer: { sha256: 'a', bytes: 1, reused: false, buildMs: 0 } }), {}), true);
    assert.equal(remotable(version({ ...handler, image: 'mine' }), {}), false);
    assert.equal(remotable(version(handler), { io: {} }), false);
    assert.equal(versionKey(version(handler)), 'acme/fn@3');
  });

  it('an idle usage message is checked field by field; anything else is dropped', () => {
    const event = { tenant: 'acme', functionName: 'fn', executor: 'sandbox', cpuMs: 12.5, memoryMb: 256 };
    const bytes = (value: unknown): Uint8Array => Buffer.from(JSON.stringify(value));
    assert.deepEqual(parseIdleUsage(bytes({ ...event, extra: 'dropped' })), event);
    assert.equal(parseIdleUsage(Buffer.from('not json')), null);
    assert.equal(parseIdleUsage(bytes(null)), null);
    assert.equal(parseIdleUsage(bytes({ ...event, executor: 'mainframe' })), null);
    assert.equal(parseIdleUsage(bytes({ ...event, cpuMs: -1 })), null);
    assert.equal(parseIdleUsage(bytes({ ...event, cpuMs: '5' })), null);
    assert.equal(parseIdleUsage(bytes({ ...event, tenant: 7 })), null);
  });

  it('--cluster and --role are checked; the node id is the node name made subject-safe', async () => {
    assert.equal(await clusterConfig({}), null);
    await assert.rejects(clusterConfig({ role: 'worker' }), /--role worker needs --cluster/);
    await assert.rejects(clusterConfig({ cluster: 'nats://a:1' }), /--cluster needs --role: gateway, worker, all/);
    await assert.rejects(clusterConfig({ role: 'boss', cluster: 'nats://a:1' }), /--role must be one of gateway, worker, all/);
    await assert.rejects(clusterConfig({ role: 'all', cluster: 'http://a:1' }), /nats:\/\//);
    assert.deepEqual(await clusterConfig({ role: 'gateway', cluster: 'nats://h1,nats://h2:4223', nodeName: 'gw.example.com' }), { urls: ['nats://h1:4222', 'nats://h2:4223'], role: 'gateway', nodeId: 'gw-example-com' });
    assert.equal(nodeIdOf('a b/c_d-e'), 'a-b-c_d-e');
  });
});
