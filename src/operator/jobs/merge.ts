/**
 * Job 5 (merge_branches): a new sandbox whose /work is the file-level merge of the branches' /work trees (the plan:
 * merge-plan.ts), built with the tar download and upload of the sandboxes service (its guards and disk limits).
 * The branches are left as they were.
 */
import { KindlingError } from '../../core/errors.js';
import { JobError, type JobContext, type JobOutput } from './context.js';
import { MERGE_STRATEGIES, parseListing, planMerge, type MergeStrategy } from './merge-plan.js';

export const MAX_MERGE_BRANCHES = 16;
/** A branch's listing larger than this (about 100k paths) is refused: MERGE_TOO_LARGE. */
const MAX_LISTING_BYTES = 16 * 1024 * 1024;
const LISTING_TIMEOUT_MS = 60_000;
export const MERGE_METADATA_KEY = 'kindling.merge';

export async function mergeBranches(context: JobContext, branchIds: readonly string[], strategyName: string): Promise<JobOutput> {
  const strategy = (strategyName === '' ? 'union' : strategyName.toLowerCase()) as MergeStrategy;
  if (!MERGE_STRATEGIES.includes(strategy)) {
    throw new KindlingError('VALIDATION_FAILED', `mergeStrategy "${strategyName.slice(0, 40)}" is not one of ${MERGE_STRATEGIES.join(', ')} (empty: union)`, { details: { field: 'mergeStrategy' } });
  }
  if (branchIds.length === 0 || branchIds.length > MAX_MERGE_BRANCHES) {
    throw new KindlingError('VALIDATION_FAILED', `branchIds must name 1 to ${MAX_MERGE_BRANCHES} instances, got ${branchIds.length}`, { details: { field: 'branchIds' } });
  }
  // A branch named twice is listed once, at its last place (the one that decides for union).
  branchIds = branchIds.filter((id, at) => branchIds.lastIndexOf(id) === at);
  const sandboxes = context.services.sandboxes;
  // Every branch must be the caller's (SANDBOX_NOT_FOUND otherwise) before anything is made.
  const views = branchIds.map((id) => sandboxes.get(context.tenant, id));
  const listings = [];
  for (const id of branchIds) {
    context.signal.throwIfAborted();
    const result = await sandboxes.run(context.tenant, id, {
      command: ['find', '.', '-mindepth', '1', '-printf', '%T@ %P\\0'],
      workdir: '/work',
      timeoutMs: LISTING_TIMEOUT_MS,
      outputBytes: MAX_LISTING_BYTES,
    });
    if (result.truncated || result.timedOut) throw new JobError('MERGE_TOO_LARGE', `branch ${id} has too many files to merge (its listing passed ${MAX_LISTING_BYTES} bytes or ${LISTING_TIMEOUT_MS} ms)`);
    if (result.exitCode !== 0) throw new KindlingError('SANDBOX_FILE_NOT_FOUND', `listing /work of branch ${id} failed: ${result.stderr.trim().slice(0, 200)}`, { details: { path: '/work' } });
    listings.push(parseListing(id, result.stdout));
  }
  const plan = planMerge(strategy, listings);
  const last = views.at(-1)!;
  const merged = await sandboxes.create(context.tenant, {
    ...(last.runtime === null ? { image: last.image } : { runtime: last.runtime }),
    executor: last.executor,
    metadata: { [MERGE_METADATA_KEY]: `${strategy}:${branchIds.join(',')}`.slice(0, 1024) },
  });
  try {
    for (const id of plan.extract) {
      context.signal.throwIfAborted();
      await sandboxes.writeTar(context.tenant, merged.id, '/work', await sandboxes.readTar(context.tenant, id, '/work'));
    }
    if (plan.remove.length > 0) {
      const removed = await sandboxes.run(context.tenant, merged.id, {
        command: ['xargs', '-0', 'rm', '-rf', '--'],
        workdir: '/work',
        stdinBase64: Buffer.from(plan.remove.map((path) => `./${path}\0`).join('')).toString('base64'),
        timeoutMs: LISTING_TIMEOUT_MS,
      });
      if (removed.exitCode !== 0) throw new Error(`removing paths of the merge failed: ${removed.stderr.slice(0, 200)}`);
    }
  } catch (error) {
    await sandboxes.delete(context.tenant, merged.id).catch(() => undefined);
    throw error;
  }
  return { values: [merged.id] };
}
