/** The scale knobs of the density, burst and throughput groups (bench/lib/scale.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseScale } from '../bench/lib/scale.js';

describe('bench scale knobs', () => {
  it('has defaults, takes --runs as the density N, and lets the named knobs win', () => {
    assert.deepEqual(parseScale({}, null, 'u'), { densityN: 200, idleMs: 10_000, burstSizes: [100, 1000], burstFunctions: 100, stepMs: 5000 });
    assert.equal(parseScale({}, 3, 'u').densityN, 3);
    const scale = parseScale({ 'density-n': '50', 'idle-ms': '2000', burst: '10, 20', 'burst-functions': '5', 'step-ms': '1000' }, 3, 'u');
    assert.deepEqual(scale, { densityN: 50, idleMs: 2000, burstSizes: [10, 20], burstFunctions: 5, stepMs: 1000 });
  });

  it('refuses values that are not whole numbers in range, naming the option and the usage', () => {
    assert.throws(() => parseScale({ burst: '100,0' }, null, 'USAGE'), /--burst must be a whole number >= 1, got "0"\nUSAGE/);
    assert.throws(() => parseScale({ 'density-n': '1.5' }, null, 'u'), /--density-n must be a whole number >= 1/);
    assert.throws(() => parseScale({ 'step-ms': '10' }, null, 'u'), /--step-ms must be a whole number >= 100/);
    assert.throws(() => parseScale({ 'idle-ms': 'abc' }, null, 'u'), /--idle-ms must be a whole number >= 100/);
  });
});
