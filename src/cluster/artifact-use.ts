/**
 * What a worker keeps of the bundles and layers it fetched from the cluster (src/cluster/shared-artifacts.ts). A worker
 * stores no versions, so what its versions refer to is what it ran: a function's bundles and layers stay until a
 * gateway says the function was deleted (and its warm pools here closed), or the worker restarts (its start removes
 * them all, as it reaps everything else). Every version of a function run here counts until then.
 */
import type { FunctionSpec } from '../store/store.js';
import type { ArtifactKind } from './shared-artifacts.js';

export class ArtifactUse {
  /** Per function (`tenant/name`): the `<kind>.<sha256>` of every version of it run here. */
  private readonly byFunction = new Map<string, Set<string>>();
  /** Per function: how many runs used it, so a delete notice does not forget a function run again since. */
  private readonly runs = new Map<string, number>();

  /** Called before the run fetches them: from then on a collection keeps them. */
  use(functionKey: string, spec: Pick<FunctionSpec, 'bundle' | 'layer'>): void {
    this.runs.set(functionKey, (this.runs.get(functionKey) ?? 0) + 1);
    if (spec.bundle === undefined && spec.layer === undefined) return;
    let used = this.byFunction.get(functionKey);
    if (used === undefined) this.byFunction.set(functionKey, (used = new Set()));
    if (spec.bundle !== undefined) used.add(`bundle.${spec.bundle.sha256}`);
    if (spec.layer !== undefined) used.add(`layer.${spec.layer.sha256}`);
  }

  /** The mark to give `forget`: taken when the delete notice arrives. */
  mark(functionKey: string): number {
    return this.runs.get(functionKey) ?? 0;
  }

  /**
   * The function was deleted and its sandboxes here are gone: what only it used may be removed, unless a run of it
   * (deployed again) came after `mark`.
   */
  forget(functionKey: string, mark: number): boolean {
    if ((this.runs.get(functionKey) ?? 0) !== mark) return false;
    this.byFunction.delete(functionKey);
    this.runs.delete(functionKey);
    return true;
  }

  uses(kind: ArtifactKind, sha256: string): boolean {
    const entry = `${kind}.${sha256}`;
    for (const used of this.byFunction.values()) if (used.has(entry)) return true;
    return false;
  }
}
