/** Directories of files for tests that deploy or upload a project (bundles, builds). */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after } from 'node:test';

/**
 * A maker of fresh directories under one temp dir named `prefix...`, removed when the test file ends: each call
 * writes `files` (paths relative to the new directory, parents made) and returns the directory.
 */
export function directoryMaker(prefix: string): (files: Record<string, string | Buffer>) => string {
  const work = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(work, { recursive: true, force: true }));
  return (files) => {
    const dir = mkdtempSync(join(work, 'dir-'));
    for (const [name, content] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, name)), { recursive: true });
      writeFileSync(join(dir, name), content);
    }
    return dir;
  };
}
