/**
 * The framing on both sides: the TypeScript codec against itself (split at every byte), and against the python
 * wrapper's codec (agent/python_wrapper.py) run by the host's python3 on frames made here, and vice versa.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { skipOrFail } from '../src/executors/test-support.js';
import { AGENT_VERSION, FrameDecoder, FrameType, HEADER_BYTES, MAX_CHUNK_BYTES, ProtocolError, encodeBody, encodeFrame, type Frame } from './protocol.js';

const PYTHON_WRAPPER = fileURLToPath(new URL('../../agent/python_wrapper.py', import.meta.url));
const NODE_WRAPPER = fileURLToPath(new URL('./node-wrapper.js', import.meta.url));
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

/**
 * Runs an agent as the sandbox would (its own process, connecting to the host's socket), calls its handler once with
 * `ok` and once with `fail`, and returns every frame it sent, in order.
 */
async function converse(command: string, args: (socketPath: string) => string[]): Promise<Frame[]> {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-agent-test-'));
  const socketPath = join(dir, 'agent.sock');
  const frames: Frame[] = [];
  let socket: Socket | undefined;
  const server = createServer((s) => (socket = s));
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const child = spawn(command, args(socketPath), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  try {
    const decoder = new FrameDecoder();
    let waiting: (() => void) | null = null;
    const until = async (done: () => boolean): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (!done()) {
        if (Date.now() > deadline) assert.fail(`the agent did not answer (stderr: ${stderr})`);
        await new Promise<void>((resolve) => {
          waiting = resolve;
          setTimeout(resolve, 100);
        });
      }
    };
    await until(() => socket !== undefined);
    socket!.on('data', (chunk: Buffer) => {
      frames.push(...decoder.push(chunk));
      waiting?.();
    });
    await until(() => frames.some((f) => f.type === FrameType.HELLO));
    for (const [id, body] of [[1, 'ok'], [2, 'fail']] as const) {
      socket!.write(Buffer.concat([encodeFrame(FrameType.INVOKE, id), ...encodeBody(FrameType.BODY_CHUNK, FrameType.BODY_END, id, Buffer.from(body))]));
      await until(() => frames.some((f) => f.id === id && (f.type === FrameType.RESULT_END || f.type === FrameType.ERROR)));
    }
    return frames;
  } finally {
    child.kill('SIGKILL');
    socket?.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What a version-3 agent answers: HELLO with its version, the result and an empty RESULT_END, an ERROR alone. */
function assertVersion3Answers(frames: Frame[], runtime: string): void {
  const hello = frames.find((f) => f.type === FrameType.HELLO)!;
  assert.deepEqual({ ...JSON.parse(hello.payload.toString('utf8')), pid: 0 }, { version: AGENT_VERSION, runtime, pid: 0 });
  const calls = frames.filter((f) => f.id !== 0).map((f) => [f.id, f.type, f.type === FrameType.ERROR ? /boom/.test(f.payload.toString('utf8')) : f.payload.toString('utf8')]);
  assert.deepEqual(calls, [
    [1, FrameType.RESULT_CHUNK, 'echo:ok'],
    [1, FrameType.RESULT_END, ''],
    [2, FrameType.ERROR, true],
  ]);
}

describe('agents send no per-call usage report (agent version 3)', () => {
  it('the node agent answers with the result and an empty RESULT_END, and a throw with ERROR alone (no USAGE frame)', async () => {
    assert.equal(AGENT_VERSION, 3);
    const dir = mkdtempSync(join(tmpdir(), 'kindling-agent-module-'));
    try {
      const module = join(dir, 'handler.mjs');
      writeFileSync(module, "export const handler = (body) => { if (String(body) === 'fail') throw new Error('boom'); return 'echo:' + body; };\n");
      assertVersion3Answers(await converse(process.execPath, (socketPath) => [NODE_WRAPPER, socketPath, module, 'handler']), 'node');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the python agent does the same', { skip: PYTHON === undefined ? skipOrFail('sandbox', 'no python3 on this host (the python handler runtime)') : false }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kindling-agent-module-'));
    try {
      const module = join(dir, 'handler.py');
      writeFileSync(module, "def handler(body):\n    if body == b'fail':\n        raise RuntimeError('boom')\n    return 'echo:' + body.decode()\n");
      assertVersion3Answers(await converse(PYTHON!, (socketPath) => ['-u', PYTHON_WRAPPER, socketPath, module, 'handler']), 'python');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
