/**
 * Snapshot references of jobs: a snapshot id (`snap_...`, as job 2 answers it), or `call:N`: the checkpoint that job
 * call N of the same service made (job 1 in mode `checkpointed`), so a caller who only sees the chain can use it.
 */
import { KindlingError } from '../../core/errors.js';
import type { JobContext } from './context.js';

/** Metadata key of the sandbox a `checkpointed` run leaves behind: `<serviceId>:<callId>` of the job that made it. */
export const CHECKPOINT_METADATA_KEY = 'kindling.checkpoint';

const CALL_REF = /^call:([0-9]{1,20})$/;

export function resolveSnapshotRef(context: JobContext, ref: string): string {
  const call = CALL_REF.exec(ref);
  if (call === null) return ref;
  const [sandbox] = context.services.sandboxes.list(context.tenant, { metadata: { [CHECKPOINT_METADATA_KEY]: `${context.serviceId}:${BigInt(call[1]!)}` } });
  const snapshot = sandbox === undefined ? undefined : context.services.sandboxes.listSnapshots(context.tenant, sandbox.id).sort((a, b) => a.createdAt.localeCompare(b.createdAt)).at(-1);
  if (snapshot === undefined) {
    throw new KindlingError('SNAPSHOT_NOT_FOUND', `job call ${call[1]} of service ${context.serviceId} left no checkpoint for this caller (only job 1 in mode checkpointed makes one, and deleting its instance removes it)`, { details: { snapshot: ref } });
  }
  return snapshot.id;
}
