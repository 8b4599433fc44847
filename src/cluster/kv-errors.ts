/** Telling a lost compare-and-set from a failure in the nats.js KV client. */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';

/** Another write came first: a create of a key that exists, or an update/delete against a revision no longer last. */
export function isWrongLastSequence(error: unknown): boolean {
  if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamWrongLastSequence) return true;
  // kv.create reports an existing key with its own error (it retries as an update against a deleted entry first).
  return error instanceof Error && /wrong last sequence|key exists/i.test(error.message);
}
