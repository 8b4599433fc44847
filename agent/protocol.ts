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
 * RESULT_END (JSON {durationMs, rssBytes, cpuMs, maxRssBytes}), or USAGE then ERROR (UTF-8 text of the exception; the
 * invocation failed with exit code 1). One invocation at a time per connection. PING/PONG check liveness.
 *
 * Per-call usage (AGENT_VERSION 2, announced as `version` in HELLO): the kernel's accounting of the agent process,
 * `cpuMs` the getrusage(RUSAGE_SELF) user+system CPU time the call used (the delta across it) and `maxRssBytes` the
 * process's peak resident set so far (ru_maxrss). A successful call carries them in RESULT_END's JSON; a failed one
 * sends a USAGE frame (the same JSON) right before its ERROR. Both are additions: a host ignores frame types and JSON
 * fields it does not know, and an agent of version 1 sends neither (the call is then metered without CPU time). The
 * frame header's version byte (PROTOCOL_VERSION) stays 1: the framing itself did not change.
 *
 * A generic agent (started ahead of demand with no code, MODULE "-") says HELLO with {generic: true} first and waits
 * for one LOAD; after its second HELLO it serves that function only, exactly like an agent started with the code.
 */
import { FrameDecoder as BaseFrameDecoder, encodeChunks, encodeFrame } from './frame.js';

export { HEADER_BYTES, PROTOCOL_VERSION, ProtocolError, encodeFrame, type Frame } from './frame.js';

/** The agents' feature level, sent as `version` in HELLO: 2 reports per-call usage (see above). */
export const AGENT_VERSION = 2;
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
  /** Agent -> host, right before an invocation's ERROR: JSON CallUsage of the failed call (AGENT_VERSION 2). */
  USAGE: 12,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

/** What an agent reports of one call (RESULT_END's JSON, or a USAGE frame). */
export interface CallUsage {
  /** User + system CPU time of the agent process during the call (getrusage delta), in ms. */
  cpuMs: number;
  /** Peak resident set of the agent process so far (ru_maxrss), in bytes. */
  maxRssBytes: number;
}

/** The usage in a RESULT_END or USAGE payload; null when the agent reports none (version 1) or the JSON is bad. */
export function parseCallUsage(payload: Buffer): CallUsage | null {
  if (payload.length === 0) return null;
  try {
    const value = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
    const { cpuMs, maxRssBytes } = value;
    if (typeof cpuMs !== 'number' || !Number.isFinite(cpuMs) || cpuMs < 0) return null;
    return { cpuMs, maxRssBytes: typeof maxRssBytes === 'number' && Number.isFinite(maxRssBytes) && maxRssBytes >= 0 ? maxRssBytes : 0 };
  } catch {
    return null;
  }
}

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
