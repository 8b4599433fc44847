/**
 * What a worker keeps of the bundles and layers it fetched from the cluster (src/cluster/shared-artifacts.ts). A worker
 * stores no versions, so what its versions refer to is what it ran: a function's bundles and layers stay until a
 * gateway says the function was deleted (and its warm pools here closed), or the worker restarts (its start removes
 * them all, as it reaps everything else). Every version of a function run here counts until then.
 */
import type { FunctionVersion } from '../store/store.js';
import type { ArtifactKind } from './shared-artifacts.js';

export class ArtifactUse {
  /** Per function (`tenant/name`): `<kind>.<sha256>` -> the newest deploy time (createdAtMs) of a version run here using it. */
  private readonly byFunction = new Map<string, Map<string, number>>();

  /** Called before the run fetches them: from then on a collection keeps them. */
  use(functionKey: string, version: Pick<FunctionVersion, 'spec' | 'createdAtMs'>): void {
    const { bundle, layer } = version.spec;
    if (bundle === undefined && layer === undefined) return;
    let used = this.byFunction.get(functionKey);
    if (used === undefined) this.byFunction.set(functionKey, (used = new Map()));
    for (const entry of [bundle === undefined ? null : `bundle.${bundle.sha256}`, layer === undefined ? null : `layer.${layer.sha256}`]) {
      if (entry !== null) used.set(entry, Math.max(used.get(entry) ?? 0, version.createdAtMs));
    }
  }

  /**
   * The function was deleted (the notice came at `deletedAtMs`) and its sandboxes here are gone: what only its versions
   * deployed before then used may be removed. A version deployed after (the function made again through another
   * gateway, whose run may reach this worker before the notice) keeps its files. True when something was let go.
   */
  forget(functionKey: string, deletedAtMs: number): boolean {
    const used = this.byFunction.get(functionKey);
    if (used === undefined) return false;
    let forgotten = false;
    for (const [entry, createdAtMs] of used) {
      if (createdAtMs >= deletedAtMs) continue;
      used.delete(entry);
      forgotten = true;
    }
    if (used.size === 0) this.byFunction.delete(functionKey);
    return forgotten;
  }

  uses(kind: ArtifactKind, sha256: string): boolean {
    const entry = `${kind}.${sha256}`;
    for (const used of this.byFunction.values()) if (used.has(entry)) return true;
    return false;
  }
}
