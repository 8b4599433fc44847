import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { uploadBody } from './upload.js';

async function bytesOf(body: ReturnType<typeof uploadBody>): Promise<string> {
  return new TextDecoder().decode(await new Response(body as BodyInit).arrayBuffer());
}

describe('uploadBody', () => {
  it('passes strings, bytes, Blobs and ReadableStreams as they are, and ArrayBuffers as bytes', async () => {
    const stream = new Blob(['x']).stream();
    assert.equal(uploadBody('text'), 'text');
    const bytes = new Uint8Array([1, 2]);
    assert.equal(uploadBody(bytes), bytes);
    assert.equal(uploadBody(stream), stream);
    const blob = new Blob(['b']);
    assert.equal(uploadBody(blob), blob);
    assert.deepEqual(uploadBody(new Uint8Array([3]).buffer), new Uint8Array([3]));
  });

  it('turns an async iterable (a Node.js Readable, a generator of strings and bytes) into a stream', async () => {
    assert.equal(await bytesOf(uploadBody(Readable.from([Buffer.from('node '), Buffer.from('readable')]))), 'node readable');
    const mixed = (async function* () {
      yield 'a';
      yield new TextEncoder().encode('b');
    })();
    assert.equal(await bytesOf(uploadBody(mixed)), 'ab');
  });

  it('reads the source only as fast as the stream is read (one chunk per pull)', async () => {
    let produced = 0;
    const source = (async function* () {
      for (let i = 0; i < 1000; i++) {
        produced++;
        yield new Uint8Array(1024);
      }
    })();
    const reader = (uploadBody(source) as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    await new Promise((resolve) => setTimeout(resolve, 20));
    // The stream's default high-water mark (1 chunk) may pull one ahead; never the whole source.
    assert.ok(produced <= 3, `${produced} chunks produced after one read`);
    await reader.cancel();
  });

  it('refuses what is not data', () => {
    assert.throws(() => uploadBody(42 as never), TypeError);
  });
});
