/**
 * Persistent sandboxes started ahead of demand, per shape (image + work dir), so that a create takes one that is up
 * (bwrap, the supervisor ready, its command FIFOs made, its btrfs subvolume made) instead of starting one: the pattern
 * of the one-off executor's prepared launchers (launcher.ts), one level further. Measured on this machine under load:
 * starting bwrap and the supervisor is 100-200 ms of a create; taking a pooled sandbox is a rename, a qgroup limit, the
 * cgroup's limits and a new network namespace pin.
 *
 * A pooled sandbox never ran anyone's code: it is started with an empty env (the taker's env is exported by each of its
 * commands), no limits of a tenant's (the cgroup's memory/cpu/pids and the disk's size are set when taken), and its
 * wall-clock backstop is the pool's idle TTL (a pooled sandbox nobody took ends then; the taker's own lifetime replaces
 * it). Each is handed out once: take() removes it from the pool before anyone sees it; a dead one is dropped.
 * Only fresh creates are served (not a restart on kept files, not a fork from a snapshot, not egress).
 * The pool holds up to `perShape` sandboxes for each of the `maxShapes` shapes asked for most recently; it fills one
 * at a time in the background after a create of that shape, and is emptied at close (subvolumes removed).
 */
import { randomBytes } from 'node:crypto';
import type { RunSpec } from '../../core/types.js';
import type { Logger } from '../shared/logger.js';
import type { BwrapPersistentSandbox } from './persistent.js';

export interface PersistentPoolOptions {
  perShape: number;
  maxShapes: number;
  /** Starts a sandbox of `shape` under the pool's id `poolId` (its subvolume is `poolId`'s). */
  start(shape: PoolShape, poolId: string): Promise<BwrapPersistentSandbox>;
  /** Removes the disk of a pooled sandbox that was never taken. */
  removeDisk(poolId: string): Promise<void>;
  log: Logger;
}

/** A pool key is image + work dir; `limits` are the last asked for (pooled sandboxes start with them; reset when taken). */
export interface PoolShape {
  image: string;
  workdir: string;
  limits: RunSpec['limits'];
}

export interface Pooled {
  poolId: string;
  sandbox: BwrapPersistentSandbox;
}

export class PersistentPool {
  private readonly shapes = new Map<string, { shape: PoolShape; ready: Pooled[]; filling: boolean }>();
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;
  /** Creates served from the pool, and creates that found none ready (for tests and logs). */
  readonly stats = { hits: 0, misses: 0 };

  constructor(private readonly options: PersistentPoolOptions) {}

  /** Sandboxes ready in the pool now, all shapes together. */
  get ready(): number {
    let count = 0;
    for (const entry of this.shapes.values()) count += entry.ready.length;
    return count;
  }

  /** A ready sandbox of `shape`, removed from the pool (then refilled in the background); null when none is ready. */
  take(shape: PoolShape): Pooled | null {
    const key = keyOf(shape);
    const entry = this.touch(shape);
    let taken: Pooled | null = null;
    while (entry.ready.length > 0 && taken === null) {
      const candidate = entry.ready.shift()!;
      if (candidate.sandbox.alive) taken = candidate;
    }
    if (taken === null) this.stats.misses++;
    else this.stats.hits++;
    this.fill(key);
    return taken;
  }

  /** Destroys every pooled sandbox and removes its disk; nothing is pooled afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.inFlight]);
    const all = [...this.shapes.values()].flatMap((entry) => entry.ready.splice(0));
    this.shapes.clear();
    await Promise.all(all.map((pooled) => this.discard(pooled)));
  }

  /** The shape's entry, refreshed as the most recently asked for; the least recent shape leaves over maxShapes. */
  private touch(shape: PoolShape): { shape: PoolShape; ready: Pooled[]; filling: boolean } {
    const key = keyOf(shape);
    let entry = this.shapes.get(key);
    if (entry !== undefined) this.shapes.delete(key);
    entry ??= { shape, ready: [], filling: false };
    entry.shape = shape;
    this.shapes.set(key, entry);
    while (this.shapes.size > this.options.maxShapes) {
      const [oldest, dropped] = this.shapes.entries().next().value as [string, { ready: Pooled[] }];
      this.shapes.delete(oldest);
      for (const pooled of dropped.ready.splice(0)) void this.discard(pooled);
    }
    return entry;
  }

  private fill(key: string): void {
    const entry = this.shapes.get(key);
    if (entry === undefined || entry.filling || this.closed) return;
    entry.filling = true;
    const run = (async () => {
      try {
        while (!this.closed && this.shapes.get(key) === entry && entry.ready.length < this.options.perShape) {
          const poolId = `pool_${randomBytes(8).toString('hex')}`;
          let sandbox: BwrapPersistentSandbox;
          try {
            sandbox = await this.options.start(entry.shape, poolId);
          } catch (err) {
            await this.options.removeDisk(poolId).catch(() => {});
            this.options.log.warn({ err, image: entry.shape.image }, 'could not start a pooled persistent sandbox');
            return;
          }
          const pooled = { poolId, sandbox };
          if (this.closed || this.shapes.get(key) !== entry) {
            await this.discard(pooled);
            return;
          }
          entry.ready.push(pooled);
          // A pooled sandbox that ends (its idle TTL, a reaper) leaves the pool and takes its disk with it.
          void sandbox.disposed.then(async () => {
            const at = entry.ready.indexOf(pooled);
            if (at >= 0) {
              entry.ready.splice(at, 1);
              await this.options.removeDisk(poolId).catch(() => {});
            }
          });
        }
      } finally {
        entry.filling = false;
      }
    })();
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  private async discard(pooled: Pooled): Promise<void> {
    await pooled.sandbox.destroy().catch(() => {});
    await this.options.removeDisk(pooled.poolId).catch(() => {});
  }
}

function keyOf(shape: PoolShape): string {
  return JSON.stringify([shape.image, shape.workdir]);
}
