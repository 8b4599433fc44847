import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ArtifactUse } from './artifact-use.js';

const sha = (c: string): string => c.repeat(64);

describe('ArtifactUse', () => {
  it("keeps a function's bundles and layers until it is forgotten, and what another function shares after that", () => {
    const use = new ArtifactUse();
    use.use('acme/a', { bundle: { sha256: sha('1'), bytes: 1, entries: 1 }, layer: { kind: 'npm', sha256: sha('2'), bytes: 1 } as never });
    use.use('acme/a', { bundle: { sha256: sha('3'), bytes: 1, entries: 1 } });
    use.use('acme/b', { bundle: { sha256: sha('1'), bytes: 1, entries: 1 } });
    use.use('acme/c', {});
    assert.deepEqual([...use.referenced('bundle')].sort(), [sha('1'), sha('3')]);
    assert.deepEqual([...use.referenced('layer')], [sha('2')]);
    use.forget('acme/a');
    assert.deepEqual([...use.referenced('bundle')], [sha('1')], "b's bundle stays");
    assert.deepEqual([...use.referenced('layer')], []);
  });
});
