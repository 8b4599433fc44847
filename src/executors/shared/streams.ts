/** Stream helpers shared by the executors' command objects. */
import type { Readable } from 'node:stream';

/**
 * Resolves when `stream` ended (or closed), or after `graceMs`: a command's main process may have exited while a
 * background child it left still holds its output open, and its result must not wait for that child.
 */
export function streamEnded(stream: Readable, graceMs: number): Promise<void> {
  if (stream.readableEnded || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, graceMs);
    function done(): void {
      clearTimeout(timer);
      stream.off('end', done);
      stream.off('close', done);
      resolve();
    }
    stream.once('end', done);
    stream.once('close', done);
  });
}
