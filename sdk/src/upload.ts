/**
 * What an upload may be: text, bytes, a Blob, a web ReadableStream, or any async iterable of chunks (a Node.js
 * `Readable`, e.g. `fs.createReadStream(path)`, is one). Streams are sent as they are read, never gathered in memory.
 */
export type UploadData = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array | string>;

/** The request body for `data`: as is when fetch takes it, else a ReadableStream pulling from the iterable. */
export function uploadBody(data: UploadData): string | Uint8Array | Blob | ReadableStream<Uint8Array> {
  if (typeof data === 'string' || data instanceof Uint8Array || data instanceof ReadableStream) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (typeof Blob !== 'undefined' && data instanceof Blob) return data;
  if (typeof (data as AsyncIterable<unknown>)[Symbol.asyncIterator] !== 'function') throw new TypeError('upload data must be a string, bytes, a Blob, a ReadableStream or an async iterable of chunks');
  const iterator = (data as AsyncIterable<Uint8Array | string>)[Symbol.asyncIterator]();
  const encoder = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    // One chunk per pull: the source is read only as fast as the request sends (bounded memory).
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(typeof value === 'string' ? encoder.encode(value) : value);
    },
    async cancel(reason) {
      await iterator.return?.(reason);
    },
  });
}
