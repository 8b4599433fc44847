import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import type { FastifyReply } from 'fastify';
import { KindlingError } from '../core/errors.js';
import { readUpload } from './raw-body.js';

/** An upload as the route sees it (a readable with `complete`), and a reply that keeps its headers. */
function upload(chunks: string[], options: { endsWell?: boolean } = {}): { message: IncomingMessage; reply: FastifyReply; headers: Record<string, string>; drained: () => boolean } {
  const stream = new Readable({ read() {} }) as Readable & { complete: boolean };
  stream.complete = false;
  let drained = false;
  stream.on('end', () => (drained = true));
  setImmediate(() => {
    for (const chunk of chunks) stream.push(Buffer.from(chunk));
    if (options.endsWell === false) {
      stream.destroy();
      return;
    }
    stream.complete = true;
    stream.push(null);
  });
  const headers: Record<string, string> = {};
  const reply = { header: (name: string, value: string) => (headers[name] = value) } as unknown as FastifyReply;
  return { message: stream as unknown as IncomingMessage, reply, headers, drained: () => drained };
}

describe('readUpload', () => {
  it('reads every chunk into one buffer', async () => {
    const { message, reply, headers } = upload(['ab', 'c', 'def']);
    assert.deepEqual(await readUpload(message, reply, 6, '--max-body-bytes'), Buffer.from('abcdef'));
    assert.deepEqual(headers, {});
    assert.deepEqual(await readUpload(undefined, reply, 6, '--max-body-bytes'), Buffer.alloc(0));
  });

  it('past the limit: PAYLOAD_TOO_LARGE naming the flag, the rest drained, the connection closed after the answer', async () => {
    const { message, reply, headers, drained } = upload(['abcd', 'efgh', 'ijkl']);
    await assert.rejects(readUpload(message, reply, 6, '--max-body-bytes'), (error: unknown) => error instanceof KindlingError && error.code === 'PAYLOAD_TOO_LARGE' && /--max-body-bytes/.test(error.message));
    assert.equal(headers.connection, 'close');
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(drained(), 'the rest was read and thrown away');
  });

  it('a client gone mid-upload (or before the read) is an error, not a short body', async () => {
    const cut = upload(['abc'], { endsWell: false });
    await assert.rejects(readUpload(cut.message, cut.reply, 100, '--max-body-bytes'), /disconnected during the upload/);
    const gone = upload([]);
    gone.message.destroy();
    await assert.rejects(readUpload(gone.message, gone.reply, 100, '--max-body-bytes'), /disconnected during the upload/);
  });
});
