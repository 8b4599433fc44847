import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FunctionSpec } from '../store/store.js';
import { ArtifactUse } from './artifact-use.js';

const sha = (c: string): string => c.repeat(64);
const bundle = (c: string) => ({ sha256: sha(c), bytes: 1, entries: 1 });
const version = (spec: FunctionSpec, createdAtMs = 1_000) => ({ spec, createdAtMs });

describe('ArtifactUse', () => {
  it("keeps a function's bundles and layers until it is forgotten, and what another function shares after that", () => {
    const use = new ArtifactUse();
    use.use('acme/a', version({ bundle: bundle('1'), layer: { kind: 'npm', sha256: sha('2'), bytes: 1 } as never }));
    use.use('acme/a', version({ bundle: bundle('3') }));
    use.use('acme/b', version({ bundle: bundle('1') }));
    use.use('acme/c', version({}));
    assert.deepEqual([use.uses('bundle', sha('1')), use.uses('bundle', sha('3')), use.uses('layer', sha('2')), use.uses('bundle', sha('2'))], [true, true, true, false]);
    assert.equal(use.forget('acme/a', 2_000), true);
    assert.deepEqual([use.uses('bundle', sha('1')), use.uses('bundle', sha('3')), use.uses('layer', sha('2'))], [true, false, false], "b's bundle stays");
    assert.equal(use.forget('acme/a', 3_000), false, 'nothing left to let go');
  });

  it('a delete notice keeps the files of a version deployed after it (the function made again elsewhere, run here first)', () => {
    const use = new ArtifactUse();
    use.use('acme/a', version({ bundle: bundle('1') }, 1_000));
    use.use('acme/a', version({ bundle: bundle('4') }, 5_000));
    assert.equal(use.forget('acme/a', 3_000), true);
    assert.deepEqual([use.uses('bundle', sha('1')), use.uses('bundle', sha('4'))], [false, true]);
  });
});
