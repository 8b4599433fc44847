/**
 * What a worker keeps of the bundles and layers it fetched from the cluster (src/cluster/shared-artifacts.ts). A worker
 * stores no versions, so what its versions refer to is what it ran: a function's bundles and layers stay until a
 * gateway says the function was deleted (and its warm pools here closed), or the worker restarts (its start removes
 * them all, as it reaps everything else).
 */
import type { FunctionSpec } from '../store/store.js';
import type { ArtifactKind } from './shared-artifacts.js';

export class ArtifactUse {
  /** Per function (`tenant/name`): the `<kind>.<sha256>` of every version of it run here. */
  private readonly byFunction = new Map<string, Set<string>>();

  /** Called before the run fetches them: from then on a collection keeps them. */
  use(functionKey: string, spec: Pick<FunctionSpec, 'bundle' | 'layer'>): void {
    if (spec.bundle === undefined && spec.layer === undefined) return;
    let used = this.byFunction.get(functionKey);
    if (used === undefined) this.byFunction.set(functionKey, (used = new Set()));
    if (spec.bundle !== undefined) used.add(`bundle.${spec.bundle.sha256}`);
    if (spec.layer !== undefined) used.add(`layer.${spec.layer.sha256}`);
  }

  /** The function was deleted and its sandboxes here are gone: what only it used may be removed. */
  forget(functionKey: string): void {
    this.byFunction.delete(functionKey);
  }

  referenced(kind: ArtifactKind): Set<string> {
    const hashes = new Set<string>();
    for (const used of this.byFunction.values()) {
      for (const entry of used) if (entry.startsWith(`${kind}.`)) hashes.add(entry.slice(kind.length + 1));
    }
    return hashes;
  }
}
