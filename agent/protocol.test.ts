/**
 * The framing on both sides: the TypeScript codec against itself (split at every byte), and against the python
 * wrapper's codec (agent/python_wrapper.py) run by the host's python3 on frames made here, and vice versa.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { skipOrFail } from '../src/executors/test-support.js';
import { AGENT_VERSION, FrameDecoder, FrameType, HEADER_BYTES, MAX_CHUNK_BYTES, ProtocolError, encodeBody, encodeFrame, parseCallUsage } from './protocol.js';

const PYTHON_WRAPPER = fileURLToPath(new URL('../../agent/python_wrapper.py', import.meta.url));
const PYTHON = ['/usr/bin/python3', '/usr/local/bin/python3'].find((candidate) => existsSync(candidate));

describe('agent protocol (TypeScript side)', () => {
  it('round-trips frames split at every byte boundary', () => {
    const frames = [
      encodeFrame(FrameType.HELLO, 0, '{"version":1}'),
      encodeFrame(FrameType.INVOKE, 7),
      encodeFrame(FrameType.BODY_CHUNK, 7, Buffer.from([0, 1, 2, 255])),
      encodeFrame(FrameType.BODY_END, 7),
      encodeFrame(FrameType.ERROR, 0xffffffff, 'boom ✓'),
    ];
    const wire = Buffer.concat(frames);
    for (let split = 0; split <= wire.length; split++) {
      const decoder = new FrameDecoder();
      const got = [...decoder.push(wire.subarray(0, split)), ...decoder.push(wire.subarray(split))];
      assert.deepEqual(
        got.map((f) => [f.type, f.id, f.payload.toString('hex')]),
        [
          [FrameType.HELLO, 0, Buffer.from('{"version":1}').toString('hex')],
          [FrameType.INVOKE, 7, ''],
          [FrameType.BODY_CHUNK, 7, '000102ff'],
          [FrameType.BODY_END, 7, ''],
          [FrameType.ERROR, 0xffffffff, Buffer.from('boom ✓').toString('hex')],
        ],
      );
    }
  });

  it('chunks large bodies and ends them with the end frame', () => {
    const body = Buffer.alloc(MAX_CHUNK_BYTES * 2 + 5, 3);
    const frames = encodeBody(FrameType.RESULT_CHUNK, FrameType.RESULT_END, 1, body, '{}');
    assert.equal(frames.length, 4);
    const decoded = new FrameDecoder().push(Buffer.concat(frames));
    assert.equal(Buffer.concat(decoded.filter((f) => f.type === FrameType.RESULT_CHUNK).map((f) => f.payload)).length, body.length);
    assert.equal(decoded.at(-1)?.type, FrameType.RESULT_END);
    assert.equal(encodeBody(FrameType.RESULT_CHUNK, FrameType.RESULT_END, 1, Buffer.alloc(0)).length, 1);
  });

  it('rejects another protocol version and absurd lengths', () => {
    const frame = encodeFrame(FrameType.PING, 1);
    frame.writeUInt8(2, 4);
    assert.throws(() => new FrameDecoder().push(frame), ProtocolError);
    const huge = Buffer.alloc(HEADER_BYTES);
    huge.writeUInt32BE(0xffffffff, 0);
    assert.throws(() => new FrameDecoder().push(huge), ProtocolError);
  });
});

describe('per-call usage (agent version 2)', () => {
  it('reads cpuMs and maxRssBytes from RESULT_END / USAGE JSON; an older agent\'s payload has none', () => {
    assert.equal(AGENT_VERSION, 2);
    assert.deepEqual(parseCallUsage(Buffer.from('{"durationMs":3,"rssBytes":9,"cpuMs":12.5,"maxRssBytes":4096}')), { cpuMs: 12.5, maxRssBytes: 4096 });
    assert.deepEqual(parseCallUsage(Buffer.from('{"cpuMs":0}')), { cpuMs: 0, maxRssBytes: 0 });
    assert.equal(parseCallUsage(Buffer.from('{"durationMs":3,"rssBytes":9}')), null);
    assert.equal(parseCallUsage(Buffer.alloc(0)), null);
    assert.equal(parseCallUsage(Buffer.from('not json')), null);
    assert.equal(parseCallUsage(Buffer.from('{"cpuMs":-1}')), null);
  });
});

describe('agent protocol (python side)', { skip: PYTHON === undefined ? skipOrFail('sandbox', 'no python3 on this host (the python handler runtime)') : false }, () => {
  it('python decodes what TypeScript encodes and TypeScript decodes what python encodes', () => {
    const input = Buffer.concat([encodeFrame(FrameType.INVOKE, 42), encodeFrame(FrameType.BODY_CHUNK, 42, Buffer.from([0, 200, 10])), encodeFrame(FrameType.BODY_END, 42)]);
    const script = `
import importlib.util, io, sys
spec = importlib.util.spec_from_file_location("w", ${JSON.stringify(PYTHON_WRAPPER)})
w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)
class S:
    def __init__(self, data): self.data = data
    def recv(self, n):
        out, self.data = self.data[:3], self.data[3:]   # tiny reads: the reader must reassemble
        return out
r = w.Reader(S(sys.stdin.buffer.read()))
got = [r.read() for _ in range(3)]
assert [(k, i) for k, i, _ in got] == [(w.INVOKE, 42), (w.BODY_CHUNK, 42), (w.BODY_END, 42)], got
assert got[1][2] == bytes([0, 200, 10])
sys.stdout.buffer.write(w.frame(w.RESULT_CHUNK, 42, b"\\x00ok") + w.frame(w.RESULT_END, 42, '{"durationMs":1}') + w.frame(w.STDERR, 42, "log ✓"))
assert (w.USAGE, w.AGENT_VERSION) == (${FrameType.USAGE}, ${AGENT_VERSION})
u = w.call_usage(w.cpu_seconds())
assert u["cpuMs"] >= 0 and u["maxRssBytes"] > 1000000, u
`;
    const output = execFileSync(PYTHON!, ['-c', script], { input });
    const frames = new FrameDecoder().push(output);
    assert.deepEqual(
      frames.map((f) => [f.type, f.id, f.payload.toString('utf8')]),
      [
        [FrameType.RESULT_CHUNK, 42, '\u0000ok'],
        [FrameType.RESULT_END, 42, '{"durationMs":1}'],
        [FrameType.STDERR, 42, 'log ✓'],
      ],
    );
  });
});
