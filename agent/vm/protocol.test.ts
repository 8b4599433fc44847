import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  FrameDecoder,
  HEADER_BYTES,
  MAX_CHUNK_BYTES,
  MessageType,
  PROTOCOL_VERSION,
  ProtocolError,
  decodeFileBody,
  decodeJson,
  encodeChunks,
  encodeFileBody,
  encodeFrame,
  encodeJson,
  messageTypeName,
} from './protocol.js';

describe('microvm agent protocol', () => {
  it('encodes the documented header: length, version, type, stream id', () => {
    const frame = encodeFrame(MessageType.STDOUT, 7, Buffer.from('hi'));
    assert.equal(frame.length, HEADER_BYTES + 2);
    assert.equal(frame.readUInt32BE(0), HEADER_BYTES - 4 + 2);
    assert.equal(frame.readUInt8(4), PROTOCOL_VERSION);
    assert.equal(frame.readUInt8(5), MessageType.STDOUT);
    assert.equal(frame.readUInt32BE(6), 7);
    assert.equal(frame.subarray(HEADER_BYTES).toString(), 'hi');
  });

  it('round-trips frames fed one byte at a time', () => {
    const frames = [
      encodeJson(MessageType.PING, 0, { version: PROTOCOL_VERSION }),
      encodeFrame(MessageType.STDIN, 3, randomBytes(1000)),
      encodeFrame(MessageType.STDIN_END, 3),
    ];
    const wire = Buffer.concat(frames);
    const decoder = new FrameDecoder();
    const out = [];
    for (let i = 0; i < wire.length; i++) out.push(...decoder.push(wire.subarray(i, i + 1)));
    assert.equal(out.length, 3);
    assert.deepEqual(decodeJson(out[0]!), { version: PROTOCOL_VERSION });
    assert.equal(out[1]!.id, 3);
    assert.deepEqual(out[1]!.payload, frames[1]!.subarray(HEADER_BYTES));
    assert.equal(out[2]!.type, MessageType.STDIN_END);
    assert.equal(out[2]!.payload.length, 0);
    assert.equal(decoder.buffered, 0);
  });

  it('splits several frames out of one chunk and keeps a trailing partial frame', () => {
    const a = encodeFrame(MessageType.STDOUT, 1, 'a');
    const b = encodeFrame(MessageType.STDERR, 1, 'bb');
    const decoder = new FrameDecoder();
    const first = decoder.push(Buffer.concat([a, b.subarray(0, 5)]));
    assert.equal(first.length, 1);
    assert.equal(decoder.buffered, 5);
    const second = decoder.push(b.subarray(5));
    assert.equal(second.length, 1);
    assert.equal(second[0]!.payload.toString(), 'bb');
  });

  it('rejects a wrong version and an impossible length', () => {
    const frame = encodeFrame(MessageType.PING, 0);
    frame.writeUInt8(PROTOCOL_VERSION + 1, 4);
    assert.throws(() => new FrameDecoder().push(frame), ProtocolError);
    const bad = Buffer.alloc(8);
    bad.writeUInt32BE(2, 0);
    assert.throws(() => new FrameDecoder().push(bad), /bad frame length/);
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(0xffffffff, 0);
    assert.throws(() => new FrameDecoder().push(huge), /bad frame length/);
  });

  it('chunks bulk data at MAX_CHUNK_BYTES and reassembles it byte-exact', () => {
    const data = randomBytes(MAX_CHUNK_BYTES * 2 + 17);
    const frames = encodeChunks(MessageType.STDIN, 9, data);
    assert.equal(frames.length, 3);
    assert.deepEqual(encodeChunks(MessageType.STDIN, 9, Buffer.alloc(0)), []);
    const decoder = new FrameDecoder();
    const wire = Buffer.concat(frames);
    const parts: Buffer[] = [];
    for (let at = 0; at < wire.length; at += 4093) parts.push(...decoder.push(wire.subarray(at, at + 4093)).map((f) => f.payload));
    assert.deepEqual(Buffer.concat(parts), data);
  });

  it('carries a file header and bytes in one payload', () => {
    const data = randomBytes(300);
    const { header, data: back } = decodeFileBody(encodeFileBody({ path: '/.kindling/main.py', mode: 0o644 }, data));
    assert.deepEqual(header, { path: '/.kindling/main.py', mode: 0o644 });
    assert.deepEqual(back, data);
    assert.throws(() => decodeFileBody(Buffer.from([0, 0, 0, 50, 1])), ProtocolError);
  });

  it('names message types for logs', () => {
    assert.equal(messageTypeName(MessageType.EXIT), 'EXIT');
    assert.equal(messageTypeName(200), 'UNKNOWN(200)');
  });
});
