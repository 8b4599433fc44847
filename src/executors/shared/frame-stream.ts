/**
 * The host's reader of the agent protocol (agent/protocol.ts) on a warm sandbox's socket. Unlike FrameDecoder it does
 * assemble only the frame types in `whole` (HELLO, ERROR, ...: small, or needed at once); every other frame's payload (a
 * handler's result and log bytes, and types the host does not know) is handed over in the pieces the socket delivered
 * it in (views, no copy), so that bytes the host drops past a limit are never gathered into frames first: a sandbox
 * writing frames at full speed costs the server a constant amount of memory.
 */
import { readFrameHeader } from '../../../agent/frame.js';
import { HEADER_BYTES, MAX_FRAME_BYTES } from '../../../agent/protocol.js';

export interface FramePiece {
  type: number;
  id: number;
  /** The whole payload, or for a streamed frame the next piece of it (empty for an empty frame). */
  payload: Buffer;
}

export class FrameStreamDecoder {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerBytes = 0;
  private type = 0;
  private id = 0;
  /** Payload bytes of the current frame still to come (-1: reading a header). */
  private remaining = -1;
  private parts: Buffer[] = [];

  constructor(private readonly whole: ReadonlySet<number>) {}

  /** Feeds a chunk; calls `onFrame` for each whole frame or streamed piece. Throws ProtocolError on bad framing. */
  push(chunk: Buffer, onFrame: (piece: FramePiece) => void): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining < 0) {
        const take = Math.min(HEADER_BYTES - this.headerBytes, chunk.length - at);
        chunk.copy(this.header, this.headerBytes, at, at + take);
        this.headerBytes += take;
        at += take;
        if (this.headerBytes < HEADER_BYTES) return;
        const header = readFrameHeader(this.header, MAX_FRAME_BYTES);
        this.type = header.type;
        this.id = header.id;
        this.headerBytes = 0;
        this.remaining = header.payloadBytes;
        if (this.remaining === 0) {
          this.remaining = -1;
          onFrame({ type: this.type, id: this.id, payload: Buffer.alloc(0) });
        }
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - at);
      const piece = chunk.subarray(at, at + take);
      at += take;
      this.remaining -= take;
      if (!this.whole.has(this.type)) {
        onFrame({ type: this.type, id: this.id, payload: piece });
      } else {
        this.parts.push(piece);
        if (this.remaining === 0) {
          const payload = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
          this.parts = [];
          onFrame({ type: this.type, id: this.id, payload });
        }
      }
      if (this.remaining === 0) this.remaining = -1;
    }
  }
}
