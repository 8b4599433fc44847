/**
 * Where a sync invocation runs (pure; the registry view is its input):
 * 1. a worker that holds a warm sandbox of that version and has a free slot, the one with the fewest in flight;
 * 2. otherwise (cold, or its warm holders are full) one of the `spread` workers that rank highest for that version by
 *    rendezvous hashing among the workers with a free slot, the one with the fewest in flight. Every gateway computes
 *    the same ranking without talking to the others, so a cold function's warm pool forms on at most `spread` workers
 *    instead of on all of them, and a worker joining or leaving moves only the versions it ranks first for.
 * A full worker (inFlight >= capacity) is never chosen; null means no worker has a free slot (the caller queues or
 * answers 503).
 */
import { createHash } from 'node:crypto';

export interface PlacementCandidate {
  nodeId: string;
  capacity: number;
  inFlight: number;
  warm: readonly string[];
  /** A draining worker takes no new work. */
  draining?: boolean;
}

export interface PlacementOptions {
  /** Workers a cold function's warm pool may form on. Default 2. */
  spread?: number;
}

/** The rendezvous score of a worker for a function version: the highest score wins. */
export function rendezvousScore(versionKey: string, nodeId: string): bigint {
  return createHash('sha256').update(versionKey).update('\0').update(nodeId).digest().readBigUInt64BE(0);
}

const fewestInFlight = (a: PlacementCandidate, b: PlacementCandidate): number => a.inFlight - b.inFlight || a.nodeId.localeCompare(b.nodeId);

export function placeInvocation(workers: readonly PlacementCandidate[], versionKey: string, options: PlacementOptions = {}): string | null {
  const open = workers.filter((worker) => !worker.draining && worker.inFlight < worker.capacity);
  if (open.length === 0) return null;
  const warm = open.filter((worker) => worker.warm.includes(versionKey)).sort(fewestInFlight);
  if (warm[0] !== undefined) return warm[0].nodeId;
  const spread = Math.max(1, options.spread ?? 2);
  const ranked = open
    .map((worker) => ({ worker, score: rendezvousScore(versionKey, worker.nodeId) }))
    .sort((a, b) => (a.score === b.score ? 0 : a.score > b.score ? -1 : 1))
    .slice(0, spread)
    .map((entry) => entry.worker)
    // Equal loads keep the rendezvous order (the sort is stable): a tie broken by node id would send every cold
    // function of an idle cluster to the same worker of its pair.
    .sort((a, b) => a.inFlight - b.inFlight);
  return ranked[0]?.nodeId ?? null;
}
