import type { IncomingMessage } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { FastifyReply } from 'fastify';
import { KindlingError } from '../core/errors.js';

/** Counts the bytes of a raw upload and fails it past the limit (fastify's bodyLimit does not see streamed bodies). */
export class ByteLimit extends Transform {
  private seen = 0;
  /** Bytes that went through so far. */
  get bytes(): number {
    return this.seen;
  }
  constructor(
    private readonly maxBytes: number,
    private readonly flag = '--max-stream-bytes',
  ) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.maxBytes) {
      callback(new KindlingError('PAYLOAD_TOO_LARGE', `the request body is larger than this server's limit of ${this.maxBytes} bytes; send less or raise ${this.flag}`));
      return;
    }
    callback(null, chunk);
  }
}

/** A declared Content-Length beyond the limit is refused before anything is read. */
export function checkDeclaredLength(headers: IncomingMessage['headers'], maxBytes: number, flag: string): void {
  const declared = Number(headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    throw new KindlingError('PAYLOAD_TOO_LARGE', `the request body (${declared} bytes) is larger than this server's limit of ${maxBytes} bytes; send less or raise ${flag}`);
  }
}

/**
 * Wraps a raw upload in a ByteLimit. When the limit is passed or the client goes away mid-upload, the returned stream
 * fails (which ends the execution reading it), the rest of the upload is drained, and the connection is closed after
 * the answer. `error()` tells what went wrong, if anything.
 */
export function limitUpload(upload: IncomingMessage, reply: FastifyReply, maxBytes: number, flag = '--max-stream-bytes'): { stream: ByteLimit; error: () => unknown } {
  const limited = new ByteLimit(maxBytes, flag);
  let uploadError: unknown = null;
  limited.on('error', (error) => {
    uploadError = error;
    // Stop reading what is left and close the connection after the answer: an abandoned, paused upload would
    // otherwise keep the socket (and a graceful shutdown) waiting forever.
    upload.unpipe(limited);
    upload.resume();
    reply.header('connection', 'close');
  });
  upload.on('error', (error) => limited.destroy(error));
  // A body that stops before its end (client gone) must not look like end-of-file to the program.
  upload.on('close', () => {
    if (!upload.complete) limited.destroy(new Error('the client disconnected during the upload'));
  });
  upload.pipe(limited);
  return { stream: limited, error: () => uploadError };
}

/**
 * Reads a whole (bounded) raw upload into memory: for payloads that must be stored or handed over whole. Fails like
 * limitUpload (past the limit: PAYLOAD_TOO_LARGE, the rest drained and the connection closed after the answer; a
 * client gone mid-upload: an error), with plain 'data' listeners: no Transform, pipe or async iterator for what is
 * mostly a small body (an async enqueue or a handler's event).
 */
export function readUpload(upload: IncomingMessage | undefined, reply: FastifyReply, maxBytes: number, flag: string): Promise<Buffer> {
  if (upload === undefined) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const done = (): void => {
      upload.off('data', onData);
      upload.off('end', onEnd);
      upload.off('error', onError);
      upload.off('close', onClose);
    };
    const fail = (error: unknown): void => {
      done();
      // Stop reading what is left and close the connection after the answer (see limitUpload).
      upload.resume();
      reply.header('connection', 'close');
      reject(error);
    };
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length;
      if (bytes > maxBytes) {
        fail(new KindlingError('PAYLOAD_TOO_LARGE', `the request body is larger than this server's limit of ${maxBytes} bytes; send less or raise ${flag}`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      done();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, bytes));
    };
    const onError = (error: Error): void => fail(error);
    const onClose = (): void => {
      if (!upload.complete) fail(new Error('the client disconnected during the upload'));
    };
    if (upload.destroyed) {
      // Gone before it was read (its 'close' already happened): nothing more will come.
      fail(new Error('the client disconnected during the upload'));
      return;
    }
    upload.on('data', onData);
    upload.on('end', onEnd);
    upload.on('error', onError);
    upload.on('close', onClose);
  });
}

/** Whether the answer to `request` may carry HTTP trailers (chunked encoding: HTTP/1.1 and later, not HTTP/1.0). */
export function trailersAllowed(request: { raw: IncomingMessage }): boolean {
  return !(request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor === 0);
}
