/**
 * The frame codec shared by both agent protocols: the resident agent's (agent/protocol.ts, host <-> runtime wrapper
 * over a unix socket) and the microVM guest agent's (agent/vm/protocol.ts, host <-> guest over virtio-serial/vsock).
 * The protocols differ in their message types and limits; the framing is this one.
 *
 * A frame is
 *   u32 big-endian length of everything after this field (>= HEADER_BYTES - 4)
 *   u8  framing version (PROTOCOL_VERSION)
 *   u8  type (the protocol's message type)
 *   u32 big-endian id (the protocol's invocation or stream id)
 *   payload (length - 6 bytes)
 *
 * No dependencies and no Node-version-specific APIs: this file is shipped next to the agents, into every warm sandbox
 * (agent/files.ts: flat under /.kindling, beside protocol.js) and onto the microVM agent disk (src/executors/microvm/
 * assets.ts: the dist/agent tree as it is, so that vm/protocol.js finds ../frame.js). agent/python_wrapper.py
 * implements the same framing for the python runtime.
 */
export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 10;

export interface Frame {
  type: number;
  /** The invocation id (resident agent) or stream id (guest agent); 0 for connection-level messages. */
  id: number;
  payload: Buffer;
}

/** What a frame header says (see readFrameHeader). */
export interface FrameHeader {
  type: number;
  id: number;
  /** Bytes of payload after the header. */
  payloadBytes: number;
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

const EMPTY = Buffer.alloc(0);

/** One frame. With `maxFrameBytes`, a frame over it throws ProtocolError here rather than at the receiver. */
export function encodeFrame(type: number, id: number, payload: Buffer | string = EMPTY, maxFrameBytes?: number): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (maxFrameBytes !== undefined && HEADER_BYTES - 4 + body.length > maxFrameBytes) throw new ProtocolError(`frame of ${body.length} bytes is over the limit`);
  const frame = Buffer.allocUnsafe(HEADER_BYTES + body.length);
  frame.writeUInt32BE(HEADER_BYTES - 4 + body.length, 0);
  frame.writeUInt8(PROTOCOL_VERSION, 4);
  frame.writeUInt8(type, 5);
  frame.writeUInt32BE(id >>> 0, 6);
  body.copy(frame, HEADER_BYTES);
  return frame;
}

/** `data` as frames of at most `chunkBytes` of payload each (none for an empty buffer). */
export function encodeChunks(type: number, id: number, data: Buffer, chunkBytes: number): Buffer[] {
  const frames: Buffer[] = [];
  for (let at = 0; at < data.length; at += chunkBytes) frames.push(encodeFrame(type, id, data.subarray(at, at + chunkBytes)));
  return frames;
}

/** The length field of a frame starting at `buffer[0]` (at least 4 bytes), checked. Throws ProtocolError. */
export function readFrameLength(buffer: Buffer, maxFrameBytes: number): number {
  const length = buffer.readUInt32BE(0);
  if (length < HEADER_BYTES - 4 || length > maxFrameBytes) throw new ProtocolError(`bad frame length ${length}`);
  return length;
}

/** The header at `buffer[0]` (at least HEADER_BYTES), checked: length and version. Throws ProtocolError. */
export function readFrameHeader(buffer: Buffer, maxFrameBytes: number): FrameHeader {
  const length = readFrameLength(buffer, maxFrameBytes);
  const version = buffer.readUInt8(4);
  if (version !== PROTOCOL_VERSION) throw new ProtocolError(`protocol version ${version} is not ${PROTOCOL_VERSION}`);
  return { type: buffer.readUInt8(5), id: buffer.readUInt32BE(6), payloadBytes: length - (HEADER_BYTES - 4) };
}

/** Reassembles frames from arbitrary stream chunks. Throws ProtocolError on a bad version or length. */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.pendingBytes >= 4) {
      const length = readFrameLength(this.peek(4), this.maxFrameBytes);
      if (this.pendingBytes < 4 + length) break;
      const frame = this.take(4 + length);
      const { type, id } = readFrameHeader(frame, this.maxFrameBytes);
      frames.push({ type, id, payload: frame.subarray(HEADER_BYTES) });
    }
    return frames;
  }

  /** Bytes received that do not form a whole frame yet. */
  get buffered(): number {
    return this.pendingBytes;
  }

  private peek(bytes: number): Buffer {
    if ((this.pending[0] as Buffer).length < bytes) this.pending = [Buffer.concat(this.pending)];
    return this.pending[0] as Buffer;
  }

  private take(bytes: number): Buffer {
    const first = this.peek(bytes);
    const out = first.subarray(0, bytes);
    if (first.length === bytes) this.pending.shift();
    else this.pending[0] = first.subarray(bytes);
    this.pendingBytes -= bytes;
    return out;
  }
}
