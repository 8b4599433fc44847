/** Unit tests of the `kindling sandbox` CLI's output helpers (no server: the rows and messages it prints). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { SandboxInfo } from '@kindling/sdk';
import { directoryHint, sandboxLine } from './sandboxes.js';

describe('kindling sandbox output', () => {
  it('ls shows each sandbox\'s executor', () => {
    const sb = { id: 'sb_abc', state: 'hibernated', executor: 'gvisor', image: 'kindling/base', createdAt: '2026-12-02T08:00:00.000Z' } as SandboxInfo;
    const row = sandboxLine(sb);
    assert.match(row, /^sb_abc\s+hibernated\s+gvisor\s+kindling\/base\s+2026-12-02T08:00:00.000Z$/);
  });

  it('cp of a sandbox directory without -r says to use -r; other errors pass through', () => {
    const error = Object.assign(new Error('/work/tree: is a directory'), { code: 'SANDBOX_PATH_INVALID' });
    assert.equal(directoryHint(error, 'sb_abc:/work/tree', './back2')?.message, 'sb_abc:/work/tree is a directory: copy it out with -r (kindling sandbox cp -r sb_abc:/work/tree ./back2)');
    assert.equal(directoryHint(Object.assign(new Error('no file or directory /work/x in the sandbox'), { code: 'SANDBOX_FILE_NOT_FOUND' }), 'sb_abc:/work/x', '.'), undefined);
    assert.equal(directoryHint(Object.assign(new Error('/work/x: Permission denied'), { code: 'SANDBOX_PATH_INVALID' }), 'sb_abc:/work/x', '.'), undefined);
  });
});
