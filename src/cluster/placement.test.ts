import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { placeInvocation, rendezvousScore, type PlacementCandidate } from './placement.js';

const worker = (nodeId: string, inFlight: number, warm: string[] = [], capacity = 8): PlacementCandidate => ({ nodeId, capacity, inFlight, warm });

describe('placeInvocation', () => {
  it('sends a warm version to a warm holder, the one with the fewest in flight, even if a cold worker is idler', () => {
    const workers = [worker('a', 0), worker('b', 5, ['f@1']), worker('c', 3, ['f@1']), worker('d', 1, ['g@1'])];
    assert.equal(placeInvocation(workers, 'f@1'), 'c');
  });

  it('skips full warm holders and draining workers', () => {
    const workers = [worker('b', 8, ['f@1']), { ...worker('c', 0, ['f@1']), draining: true }, worker('d', 2), worker('e', 1)];
    const chosen = placeInvocation(workers, 'f@1');
    assert.ok(chosen === 'd' || chosen === 'e');
  });

  it('never chooses a full worker and returns null when all are full', () => {
    assert.equal(placeInvocation([worker('a', 8), worker('b', 9)], 'f@1'), null);
    assert.equal(placeInvocation([], 'f@1'), null);
    assert.equal(placeInvocation([worker('a', 8), worker('b', 7)], 'f@1'), 'b');
  });

  it('places a cold version on few workers: at most `spread` distinct workers over many placements, whatever the load', () => {
    const ids = Array.from({ length: 10 }, (_, i) => `w${i}`);
    const chosen = new Set<string>();
    for (let round = 0; round < 200; round++) {
      // Loads change every round; the version stays cold (no warm list), as during a burst of first calls.
      const workers = ids.map((id, i) => worker(id, (round * 7 + i * 3) % 8));
      const pick = placeInvocation(workers, 'cold@3', { spread: 2 });
      if (pick !== null) chosen.add(pick);
    }
    assert.ok(chosen.size >= 1 && chosen.size <= 2, `chosen ${[...chosen].join(',')}`);
  });

  it('spreads different cold versions over different workers', () => {
    const workers = Array.from({ length: 10 }, (_, i) => worker(`w${i}`, 0));
    const chosen = new Set(Array.from({ length: 50 }, (_, i) => placeInvocation(workers, `fn${i}@1`, { spread: 1 })));
    assert.ok(chosen.size >= 6, `50 versions landed on only ${chosen.size} of 10 workers`);
  });

  it('on idle workers, cold versions go to the first of their pair by rank, not always to the same worker', () => {
    const pair = [worker('wa', 0), worker('wb', 0)];
    const chosen = Array.from({ length: 40 }, (_, i) => placeInvocation(pair, `fn${i}@1`));
    const onA = chosen.filter((node) => node === 'wa').length;
    assert.ok(onA >= 10 && onA <= 30, `${onA} of 40 cold versions on wa`);
  });

  it('moves only what the leaving worker ranked first for (rendezvous)', () => {
    const all = Array.from({ length: 5 }, (_, i) => worker(`w${i}`, 0));
    const without = all.filter((w) => w.nodeId !== 'w2');
    for (let i = 0; i < 100; i++) {
      const key = `fn${i}@1`;
      const before = placeInvocation(all, key, { spread: 1 });
      if (before !== 'w2') assert.equal(placeInvocation(without, key, { spread: 1 }), before, key);
    }
  });

  it('scores deterministically', () => {
    assert.equal(rendezvousScore('f@1', 'a'), rendezvousScore('f@1', 'a'));
    assert.notEqual(rendezvousScore('f@1', 'a'), rendezvousScore('f@1', 'b'));
  });
});
