/**
 * Job 5's merge, planned from the branches' /work listings (pure: unit-tested beside it). The merged tree is built by
 * extracting whole branch trees in order into an empty /work (a later one overwrites a path an earlier one has) and
 * then removing what the strategy leaves out:
 * - union: every path of every branch; a path in several branches has the version of the later branch in the list.
 * - intersection: only the paths present in every branch (as a file, directory or link), with the last branch's version.
 * - latest: the whole tree of the branch modified most recently (its newest file time; a tie goes to the later one).
 */
export type MergeStrategy = 'union' | 'intersection' | 'latest';
export const MERGE_STRATEGIES: readonly MergeStrategy[] = ['union', 'intersection', 'latest'];

export interface BranchListing {
  id: string;
  /** Paths relative to /work (no leading slash), every entry (directories too). */
  paths: readonly string[];
  /** The newest modification time of any entry, ms; -Infinity for an empty tree. */
  newestMtimeMs: number;
}

export interface MergePlan {
  /** Branch ids whose trees are extracted, in this order. */
  extract: string[];
  /** Paths removed afterwards (top-most only: a removed directory takes its contents). */
  remove: string[];
}

export function planMerge(strategy: MergeStrategy, branches: readonly BranchListing[]): MergePlan {
  if (branches.length === 0) throw new RangeError('a merge needs at least one branch');
  switch (strategy) {
    case 'union':
      return { extract: branches.map((branch) => branch.id), remove: [] };
    case 'latest': {
      let latest = branches[0]!;
      for (const branch of branches) if (branch.newestMtimeMs >= latest.newestMtimeMs) latest = branch;
      return { extract: [latest.id], remove: [] };
    }
    case 'intersection': {
      const last = branches.at(-1)!;
      const others = branches.slice(0, -1).map((branch) => new Set(branch.paths));
      const dropped = last.paths.filter((path) => others.some((set) => !set.has(path)));
      return { extract: [last.id], remove: topMost(dropped) };
    }
  }
}

/** The paths not inside another path of the list, sorted (each path's ancestors looked up: linear in the paths). */
function topMost(paths: readonly string[]): string[] {
  const all = new Set(paths);
  return [...all]
    .filter((path) => {
      for (let slash = path.indexOf('/'); slash !== -1; slash = path.indexOf('/', slash + 1)) if (all.has(path.slice(0, slash))) return false;
      return true;
    })
    .sort();
}

/** Parses `find . -mindepth 1 -printf '%T@ %P\0'` output into a listing. */
export function parseListing(id: string, output: string): BranchListing {
  const paths: string[] = [];
  let newestMtimeMs = -Infinity;
  for (const record of output.split('\0')) {
    if (record === '') continue;
    const space = record.indexOf(' ');
    const mtimeMs = Number(record.slice(0, space)) * 1000;
    if (Number.isFinite(mtimeMs) && mtimeMs > newestMtimeMs) newestMtimeMs = mtimeMs;
    paths.push(record.slice(space + 1));
  }
  return { id, paths, newestMtimeMs };
}
