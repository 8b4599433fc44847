/**
 * Checks that a set of compiled modules copied somewhere else (into a sandbox, onto a microVM's agent disk) is
 * self-contained: every relative import of a shipped module names another shipped module. A module that is not shipped
 * only fails where it runs (a guest agent that cannot import its codec fails at boot), so the tests check it here.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Relative specifiers of static imports, re-exports and dynamic imports with a literal specifier. */
const RELATIVE_IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])(\.{1,2}\/[^'"]+)\1/g;

export function relativeImports(source: string): string[] {
  return [...source.matchAll(RELATIVE_IMPORT)].map((match) => match[2]!);
}

/** The imports of `files` (path -> content, paths relative to one root) that resolve to no file of the set. */
export function missingImports(files: ReadonlyMap<string, string | Buffer>): string[] {
  const missing: string[] = [];
  for (const [name, content] of files) {
    if (!name.endsWith('.js')) continue;
    for (const specifier of relativeImports(content.toString())) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(name), specifier));
      if (!files.has(target)) missing.push(`${name} imports ${specifier} (${target}), which is not shipped`);
    }
  }
  return missing;
}

/** Writes `files` under `dir` as they would sit where they are shipped. */
export async function writeTree(dir: string, files: ReadonlyMap<string, string | Buffer>): Promise<void> {
  for (const [name, content] of files) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), content);
  }
}
