import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ArtifactUse } from './artifact-use.js';

const sha = (c: string): string => c.repeat(64);
const bundle = (c: string) => ({ sha256: sha(c), bytes: 1, entries: 1 });

describe('ArtifactUse', () => {
  it("keeps a function's bundles and layers until it is forgotten, and what another function shares after that", () => {
    const use = new ArtifactUse();
    use.use('acme/a', { bundle: bundle('1'), layer: { kind: 'npm', sha256: sha('2'), bytes: 1 } as never });
    use.use('acme/a', { bundle: bundle('3') });
    use.use('acme/b', { bundle: bundle('1') });
    use.use('acme/c', {});
    assert.deepEqual([use.uses('bundle', sha('1')), use.uses('bundle', sha('3')), use.uses('layer', sha('2')), use.uses('bundle', sha('2'))], [true, true, true, false]);
    assert.equal(use.forget('acme/a', use.mark('acme/a')), true);
    assert.deepEqual([use.uses('bundle', sha('1')), use.uses('bundle', sha('3')), use.uses('layer', sha('2'))], [true, false, false], "b's bundle stays");
  });

  it('a delete notice does not forget a function run again after it (deployed again, a command function too)', () => {
    const use = new ArtifactUse();
    use.use('acme/a', { bundle: bundle('1') });
    const mark = use.mark('acme/a');
    use.use('acme/a', { bundle: bundle('4') });
    assert.equal(use.forget('acme/a', mark), false);
    assert.equal(use.uses('bundle', sha('4')), true);
  });
});
