import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameType, ProtocolError, encodeFrame } from '../../../agent/protocol.js';
import { FrameStreamDecoder, type FramePiece } from './frame-stream.js';

const WHOLE = new Set([FrameType.HELLO, FrameType.ERROR, FrameType.RESULT_END]);

/** Feeds `bytes` in chunks of the given sizes (cycled) and returns what came out. */
function decode(bytes: Buffer, sizes: number[]): FramePiece[] {
  const decoder = new FrameStreamDecoder(WHOLE);
  const out: FramePiece[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const size = sizes[i % sizes.length]!;
    decoder.push(bytes.subarray(at, at + size), (piece) => out.push({ ...piece, payload: Buffer.from(piece.payload) }));
    at += size;
  }
  return out;
}

test('whole frames come whole and streamed payloads come in pieces that add up, however the bytes are cut', () => {
  const result = Buffer.alloc(300_000, 7);
  const stream = Buffer.concat([
    encodeFrame(FrameType.HELLO, 0, '{"version":2}'),
    encodeFrame(FrameType.RESULT_CHUNK, 3, result),
    encodeFrame(FrameType.STDERR, 3, 'log line\n'),
    encodeFrame(FrameType.RESULT_CHUNK, 3),
    encodeFrame(FrameType.ERROR, 3, 'x'.repeat(70_000)),
    encodeFrame(FrameType.RESULT_END, 3, '{}'),
  ]);
  for (const sizes of [[1], [3, 7, 11], [65_536], [stream.length]]) {
    const pieces = decode(stream, sizes);
    const ofType = (type: number): FramePiece[] => pieces.filter((piece) => piece.type === type);
    assert.equal(ofType(FrameType.HELLO).length, 1);
    assert.equal(ofType(FrameType.HELLO)[0]!.payload.toString(), '{"version":2}');
    assert.deepEqual(Buffer.concat(ofType(FrameType.RESULT_CHUNK).map((piece) => piece.payload)), result);
    assert.ok(ofType(FrameType.RESULT_CHUNK).every((piece) => piece.id === 3));
    assert.equal(Buffer.concat(ofType(FrameType.STDERR).map((piece) => piece.payload)).toString(), 'log line\n');
    assert.equal(ofType(FrameType.ERROR).length, 1, 'a whole type is assembled once');
    assert.equal(ofType(FrameType.ERROR)[0]!.payload.length, 70_000);
    assert.equal(pieces.at(-1)!.type, FrameType.RESULT_END);
    if (sizes[0] === 1) assert.ok(ofType(FrameType.RESULT_CHUNK).length > 1000, 'streamed payloads are not gathered');
  }
});

test('bad framing throws ProtocolError', () => {
  const tooLong = Buffer.alloc(10);
  tooLong.writeUInt32BE(64 * 1024 * 1024, 0);
  assert.throws(() => new FrameStreamDecoder(WHOLE).push(tooLong, () => undefined), ProtocolError);
  const badVersion = encodeFrame(FrameType.HELLO, 0, 'x');
  badVersion.writeUInt8(9, 4);
  assert.throws(() => new FrameStreamDecoder(WHOLE).push(badVersion, () => undefined), ProtocolError);
});
