/**
 * Unit tests of the host side of the agent protocol against a scripted fake agent on an in-memory duplex pair (no VM).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Duplex } from 'node:stream';
import { finished } from 'node:stream/promises';
import {
  FrameDecoder,
  FEATURE_WINDOW,
  MAX_CHUNK_BYTES,
  MessageType,
  PROTOCOL_VERSION,
  decodeFileBody,
  decodeJson,
  encodeFileBody,
  encodeFrame,
  encodeJson,
  type ExecRequest,
  type Frame,
} from '../../../agent/vm/protocol.js';
import { waitFor } from '../../../test/helpers/wait.js';
import { AgentClient, AgentError } from './agent-client.js';
import { vmMemoryMb } from './index.js';

/** Two connected in-memory duplex streams: what one writes, the other reads. */
function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        peer().push(chunk);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
    });
  ends.push(make(() => ends[1] as Duplex), make(() => ends[0] as Duplex));
  return [ends[0] as Duplex, ends[1] as Duplex];
}

/** A fake agent: decodes what the host sends and answers through `reply`. */
function fakeAgent(onFrame: (frame: Frame, reply: (frame: Buffer) => void) => void): { client: AgentClient; agentSide: Duplex; received: Frame[] } {
  const [hostSide, agentSide] = duplexPair();
  const decoder = new FrameDecoder();
  const received: Frame[] = [];
  agentSide.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      received.push(frame);
      onFrame(frame, (out) => agentSide.write(out));
    }
  });
  return { client: new AgentClient(hostSide), agentSide, received };
}

const pong = { version: PROTOCOL_VERSION, agentVersion: 'test', uptimeMs: 1, memory: { totalBytes: 1, availableBytes: 1 } };
const request: ExecRequest = {
  argv: ['cat'],
  env: {},
  workdir: '/work',
  limits: { memoryMb: 64, pids: 16, cpus: 1, diskMb: 8 },
  stdin: true,
  uid: 65534,
  gid: 65534,
};

describe('microvm memory buckets', () => {
  it('rounds requests up to 256 MiB steps (at least one) and adds the overhead', () => {
    assert.equal(vmMemoryMb(1, 160), 256 + 160);
    assert.equal(vmMemoryMb(128, 160), 256 + 160);
    assert.equal(vmMemoryMb(256, 160), 256 + 160);
    assert.equal(vmMemoryMb(257, 160), 512 + 160);
    assert.equal(vmMemoryMb(512, 0), 512);
    assert.equal(vmMemoryMb(1000, 100), 1024 + 100);
    // Every request in a bucket maps to the same VM size (so they share one snapshot).
    assert.equal(new Set([300, 400, 512].map((mb) => vmMemoryMb(mb, 160))).size, 1);
  });
});

describe('microvm agent client', () => {
  it('pings and checks the protocol version', async () => {
    const { client, received } = fakeAgent((frame, reply) => {
      if (frame.type === MessageType.PING) reply(encodeJson(MessageType.PONG, frame.id, pong));
    });
    assert.equal((await client.ping(1000)).agentVersion, 'test');
    assert.deepEqual(decodeJson(received[0]!), { version: PROTOCOL_VERSION });
    client.close();
  });

  it('rejects a pong of another protocol version and a ping nobody answers', async () => {
    const { client } = fakeAgent((frame, reply) => reply(encodeJson(MessageType.PONG, frame.id, { ...pong, version: PROTOCOL_VERSION + 1 })));
    await assert.rejects(client.ping(1000), /agent speaks protocol/);
    client.close();
    const silent = fakeAgent(() => undefined);
    await assert.rejects(silent.client.ping(50), /did not answer within 50 ms/);
    silent.client.close();
  });

  it('puts and gets files; an ERROR reply rejects with its message', async () => {
    const files = new Map<string, Buffer>();
    const { client } = fakeAgent((frame, reply) => {
      if (frame.type === MessageType.PUT_FILE) {
        const { header, data } = decodeFileBody(frame.payload);
        files.set(header.path, Buffer.from(data));
        reply(encodeFrame(MessageType.OK, frame.id));
      } else if (frame.type === MessageType.GET_FILE) {
        const { path } = decodeJson<{ path: string }>(frame);
        const data = files.get(path);
        reply(data ? encodeFrame(MessageType.FILE, frame.id, encodeFileBody({ path }, data)) : encodeJson(MessageType.ERROR, frame.id, { message: `ENOENT ${path}` }));
      }
    });
    await client.putFile('/.kindling/a.txt', Buffer.from('hello'), 0o600, 1000);
    assert.equal((await client.getFile('/.kindling/a.txt', 1000)).toString(), 'hello');
    await assert.rejects(client.getFile('/missing', 1000), (error: Error) => error instanceof AgentError && /ENOENT \/missing/.test(error.message));
    client.close();
  });

  it('runs an exec: stdin frames and STDIN_END go out, stdout/stderr come back, exit resolves after the streams end', async () => {
    const { client, received } = fakeAgent((frame, reply) => {
      if (frame.type === MessageType.STDIN) reply(encodeFrame(MessageType.STDOUT, frame.id, frame.payload));
      if (frame.type === MessageType.STDIN_END) {
        reply(encodeFrame(MessageType.STDERR, frame.id, 'warn\n'));
        reply(encodeJson(MessageType.EXIT, frame.id, { exitCode: 3, signal: null, oomKilled: false, usage: { cpuUsec: 1, memoryPeakBytes: null } }));
      }
    });
    const exec = client.exec(request);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    exec.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    exec.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    exec.stdin?.write(Buffer.from('abc'));
    exec.stdin?.end(Buffer.from('def'));
    const exit = await exec.exit;
    assert.equal(exit.exitCode, 3);
    assert.equal(Buffer.concat(out).toString(), 'abcdef');
    assert.equal(Buffer.concat(err).toString(), 'warn\n');
    // Both output streams end (exit resolves once the agent said EXIT, after the last output).
    await Promise.all([finished(exec.stdout), finished(exec.stderr)]);
    const execFrame = received.find((frame) => frame.type === MessageType.EXEC)!;
    assert.deepEqual(decodeJson(execFrame), request);
    assert.ok(received.every((frame) => frame.id === execFrame.id));
    client.close();
  });

  it('sends KILL on the exec stream; a platform ERROR rejects exit; two execs get different stream ids', async () => {
    const { client, received } = fakeAgent((frame, reply) => {
      if (frame.type === MessageType.KILL) reply(encodeJson(MessageType.ERROR, frame.id, { message: 'spawn failed: boom' }));
    });
    const first = client.exec({ ...request, stdin: false });
    const second = client.exec({ ...request, stdin: false });
    assert.equal(first.stdin, null);
    first.kill();
    await assert.rejects(first.exit, /spawn failed: boom/);
    const [a, b] = received.filter((frame) => frame.type === MessageType.EXEC);
    assert.notEqual(a!.id, b!.id);
    assert.equal(received.find((frame) => frame.type === MessageType.KILL)!.id, a!.id);
    // A closed channel fails what is still pending, and the client reports itself closed.
    client.close();
    await assert.rejects(second.exit, /closed/);
    assert.ok(client.closed);
    assert.throws(() => client.exec(request), /closed/);
  });

  it('fails everything pending when the agent sends garbage or the channel ends', async () => {
    const { client, agentSide } = fakeAgent(() => undefined);
    const exec = client.exec({ ...request, stdin: false });
    const ping = client.ping(5000);
    const bad = Buffer.alloc(8);
    bad.writeUInt32BE(1, 0);
    agentSide.write(bad);
    await assert.rejects(exec.exit, /bad frame length/);
    await assert.rejects(ping, /bad frame length/);
    assert.ok(client.closed);
  });

  it('flow control: a reader that stops reading holds at most the window (plus one chunk) of a flood, and gets every byte once it reads', async () => {
    const window = 256 * 1024;
    const total = 8 * 1024 * 1024;
    const chunk = Buffer.alloc(MAX_CHUNK_BYTES, 7);
    // A well-behaved agent with a process producing `total` bytes: it sends while it has credit, as the guest does.
    let credit = 0;
    let sent = 0;
    let streamId = 0;
    let reply: (frame: Buffer) => void = () => undefined;
    const produce = (): void => {
      while (credit > 0 && sent < total) {
        reply(encodeFrame(MessageType.STDOUT, streamId, chunk));
        sent += chunk.length;
        credit -= chunk.length;
      }
      if (sent >= total) reply(encodeJson(MessageType.EXIT, streamId, { exitCode: 0, signal: null, oomKilled: false, usage: { cpuUsec: null, memoryPeakBytes: null } }));
    };
    const { client, received } = fakeAgent((frame, send) => {
      reply = send;
      if (frame.type === MessageType.PING) send(encodeJson(MessageType.PONG, frame.id, { ...pong, features: [FEATURE_WINDOW] }));
      if (frame.type === MessageType.EXEC) {
        streamId = frame.id;
        credit = decodeJson<ExecRequest>(frame).window!;
        setImmediate(produce);
      }
      if (frame.type === MessageType.WINDOW) {
        credit += decodeJson<{ bytes: number }>(frame).bytes;
        setImmediate(produce);
      }
    });
    await client.ping(1000);
    const exec = client.exec({ ...request, stdin: false, window });
    // Nobody reads: the agent runs out of credit and the host holds what it was granted, not the whole flood.
    await waitFor(() => exec.stats().bufferedBytes >= window, { timeoutMs: 10_000, what: 'the first window to arrive' });
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.ok(sent < total, `the agent was held back (${sent} of ${total} bytes sent)`);
    assert.ok(exec.stats().peakBufferedBytes <= window + MAX_CHUNK_BYTES, `at most window + one chunk buffered, saw ${exec.stats().peakBufferedBytes}`);
    // A slow reader: one chunk at a time, each read granting more; every byte arrives and the bound holds throughout.
    let got = 0;
    for await (const piece of exec.stdout) got += (piece as Buffer).length;
    assert.equal(got, total);
    assert.equal((await exec.exit).exitCode, 0);
    assert.ok(exec.stats().peakBufferedBytes <= window + MAX_CHUNK_BYTES, `peak ${exec.stats().peakBufferedBytes}`);
    // Grants are batched (half a window each), not one per chunk.
    const grants = received.filter((frame) => frame.type === MessageType.WINDOW).length;
    assert.ok(grants <= (2 * total) / window + 2, `${grants} WINDOW frames for ${total} bytes`);
    client.close();
  });

  it('flow control: a guest that sends past its credit loses the stream (killed, exit rejected) instead of growing the host', async () => {
    const { client, received } = fakeAgent((frame, send) => {
      if (frame.type === MessageType.PING) send(encodeJson(MessageType.PONG, frame.id, { ...pong, features: [FEATURE_WINDOW] }));
      // A hostile agent: 1 MiB at once whatever its credit.
      if (frame.type === MessageType.EXEC) for (let i = 0; i < 16; i++) send(encodeFrame(MessageType.STDOUT, frame.id, Buffer.alloc(MAX_CHUNK_BYTES)));
    });
    await client.ping(1000);
    const exec = client.exec({ ...request, stdin: false, window: 64 * 1024 });
    await assert.rejects(exec.exit, /past the flow-control window/);
    assert.ok(exec.stats().peakBufferedBytes <= 64 * 1024 + MAX_CHUNK_BYTES);
    assert.ok(received.some((frame) => frame.type === MessageType.KILL), 'the process is killed');
    client.close();
  });

  it('flow control: stdin waits for the agent to acknowledge what it wrote; an agent without the feature is not asked', async () => {
    let acknowledge = true;
    const { client, received } = fakeAgent((frame, send) => {
      if (frame.type === MessageType.PING) send(encodeJson(MessageType.PONG, frame.id, { ...pong, features: [FEATURE_WINDOW] }));
      if (frame.type === MessageType.STDIN && acknowledge) send(encodeJson(MessageType.WINDOW, frame.id, { bytes: frame.payload.length }));
    });
    const old = fakeAgent((frame, send) => {
      if (frame.type === MessageType.PING) send(encodeJson(MessageType.PONG, frame.id, pong));
    });
    await old.client.ping(1000);
    assert.throws(() => old.client.exec({ ...request, window: 1024 }), /no flow control/);
    assert.equal(old.received.filter((frame) => frame.type === MessageType.EXEC).length, 0);
    old.client.close();
    await client.ping(1000);
    const window = 64 * 1024;
    const exec = client.exec({ ...request, window });
    // Acknowledged: a megabyte goes through.
    await new Promise<void>((resolve, reject) => exec.stdin!.write(Buffer.alloc(1 << 20), (error) => (error ? reject(error) : resolve())));
    const stdinBytes = (): number => received.filter((frame) => frame.type === MessageType.STDIN).reduce((sum, frame) => sum + frame.payload.length, 0);
    assert.equal(stdinBytes(), 1 << 20);
    // Not acknowledged any more: the writer is held after one window.
    acknowledge = false;
    let written = false;
    exec.stdin!.write(Buffer.alloc(1 << 20), () => (written = true));
    await waitFor(() => stdinBytes() >= (1 << 20) + window, { timeoutMs: 10_000, what: 'a window of stdin to be sent' });
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(stdinBytes(), (1 << 20) + window, 'no byte past the window');
    assert.equal(written, false, 'the write waits for credit');
    client.close();
    await assert.rejects(exec.exit, /closed/);
  });

  it('detach/adopt: a kept exec stream goes on in the client of the restored VM (output, kill, exit there); others end with the old client', async () => {
    const old = fakeAgent(() => undefined);
    const kept = old.client.exec({ ...request, stdin: false }, { keepAcrossRestore: true });
    const other = old.client.exec({ ...request, stdin: false });
    let out = '';
    kept.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const detached = old.client.detach();
    assert.equal(detached.size, 1);
    old.client.close();
    await assert.rejects(other.exit, /closed/);
    // The restored VM's client adopts the stream before reading anything: the guest's next frames reach it.
    const [hostSide, agentSide] = duplexPair();
    const decoder = new FrameDecoder();
    const received: Frame[] = [];
    agentSide.on('data', (chunk: Buffer) => received.push(...decoder.push(chunk)));
    const restored = new AgentClient(hostSide, 1000, detached);
    agentSide.write(encodeFrame(MessageType.STDOUT, kept.stream, 'after the restore\n'));
    kept.kill();
    await waitFor(() => received.some((frame) => frame.type === MessageType.KILL), { timeoutMs: 5000, what: 'KILL on the new channel' });
    assert.equal(received.find((frame) => frame.type === MessageType.KILL)!.id, kept.stream);
    agentSide.write(encodeJson(MessageType.EXIT, kept.stream, { exitCode: 137, signal: 'SIGKILL', oomKilled: false, usage: { cpuUsec: null, memoryPeakBytes: null } }));
    assert.equal((await kept.exit).exitCode, 137);
    assert.equal(out, 'after the restore\n');
    // New streams are numbered above the saved ones.
    const next = restored.exec({ ...request, stdin: false });
    assert.ok(next.stream >= 1000);
    restored.close();
    await assert.rejects(next.exit, /closed/);
  });

  it('flow control: STDOUT_END ends stdout before the exit (a relay whose peer closed its side); output after it is dropped', async () => {
    const { client, agentSide } = fakeAgent((frame, send) => {
      if (frame.type === MessageType.PING) send(encodeJson(MessageType.PONG, frame.id, { ...pong, features: [FEATURE_WINDOW] }));
      if (frame.type === MessageType.EXEC) {
        send(encodeFrame(MessageType.STDOUT, frame.id, 'answer'));
        send(encodeFrame(MessageType.STDOUT_END, frame.id));
        send(encodeFrame(MessageType.STDOUT, frame.id, 'late'));
      }
    });
    await client.ping(1000);
    const exec = client.exec({ ...request, window: 64 * 1024 });
    let out = '';
    for await (const piece of exec.stdout) out += (piece as Buffer).toString();
    assert.equal(out, 'answer');
    // Still running: stdin is open, no EXIT yet.
    assert.equal(exec.stdin!.writable, true);
    agentSide.write(encodeJson(MessageType.EXIT, exec.stream, { exitCode: 0, signal: null, oomKilled: false, usage: { cpuUsec: null, memoryPeakBytes: null } }));
    assert.equal((await exec.exit).exitCode, 0);
    client.close();
  });
});
