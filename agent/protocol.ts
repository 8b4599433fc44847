/**
 * The framed protocol between the host and the resident agent (runtime wrapper) inside a warm sandbox, over one unix
 * socket. This module depends on nothing but ./frame.js (shipped beside it): the node wrapper imports it inside the
 * sandbox (node 18+), the host imports it too; agent/python_wrapper.py implements the same framing.
 *
 * Frames are agent/frame.ts's (length, version, type, id, payload): the type is a FrameType, the id the invocation's
 * (0 for HELLO / PING / PONG).
 *
 * A conversation: the agent connects and sends HELLO (JSON payload {version, runtime, pid}) once the user's code is
 * loaded, or ERROR (load failure, then it exits). The host then sends, per invocation, INVOKE (JSON payload, may be
 * empty; `{traceparent}` becomes the handler's env TRACEPARENT for that call), BODY_CHUNK* and BODY_END; the agent answers with STDERR* (what the handler printed), RESULT_CHUNK* and
 * RESULT_END, or ERROR (UTF-8 text of the exception; the invocation failed with exit code 1). One invocation at a time
 * per connection. PING/PONG check liveness.
 *
 * Per-call usage: agents of version 2 put their own accounting of the call in RESULT_END's payload (JSON {durationMs,
 * rssBytes, cpuMs, maxRssBytes}) and send it in a USAGE frame right before an ERROR. Hosts never read it: the code the
 * agent runs can forge it (patch the clocks, write frames on the socket), so calls are metered from the sandbox's
 * cgroup instead. Agents of version 3 (node, python) send neither: computing it cost the node agent 22 µs of CPU a call
 * (getrusage, the resident set, JSON), about 3% of the machine's time per warm call on 2 cores. The go and java agents
 * are still version 2; a host skips what they send. The frame header's version byte (PROTOCOL_VERSION) stays 1: the
 * framing itself did not change.
 *
 * A generic agent (started ahead of demand with no code, MODULE "-") says HELLO with {generic: true} first and waits
 * for one LOAD; after its second HELLO it serves that function only, exactly like an agent started with the code.
 */
import { FrameDecoder as BaseFrameDecoder, encodeChunks, encodeFrame } from './frame.js';

export { HEADER_BYTES, PROTOCOL_VERSION, ProtocolError, encodeFrame, type Frame } from './frame.js';

/** The node and python agents' feature level, sent as `version` in HELLO: 3 sends no per-call usage (see above). */
export const AGENT_VERSION = 3;
/** Largest frame accepted; bodies travel in chunks of at most MAX_CHUNK_BYTES. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
export const MAX_CHUNK_BYTES = 1024 * 1024;

export const FrameType = {
  HELLO: 1,
  INVOKE: 2,
  BODY_CHUNK: 3,
  BODY_END: 4,
  RESULT_CHUNK: 5,
  RESULT_END: 6,
  ERROR: 7,
  STDERR: 8,
  PING: 9,
  PONG: 10,
  /** Host -> generic agent: JSON {code, handler, env, esModule}; the agent loads it, then says HELLO (or ERROR). */
  LOAD: 11,
  /** Agent -> host, right before an invocation's ERROR: a version-2 agent's own usage report (hosts skip it). */
  USAGE: 12,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

/** Frames for a whole body: chunks of at most MAX_CHUNK_BYTES, then the end frame. */
export function encodeBody(chunkType: number, endType: number, id: number, body: Buffer, endPayload: Buffer | string = EMPTY): Buffer[] {
  return [...encodeChunks(chunkType, id, body, MAX_CHUNK_BYTES), encodeFrame(endType, id, endPayload)];
}

const EMPTY = Buffer.alloc(0);

/** Reassembles frames from arbitrary stream chunks. Throws ProtocolError on a bad version or an oversized frame. */
export class FrameDecoder extends BaseFrameDecoder {
  constructor() {
    super(MAX_FRAME_BYTES);
  }
}
