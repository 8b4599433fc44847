import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BuildLogs, type BuildLogMessage } from './build-logs.js';

describe('BuildLogs', () => {
  it('replays what a running build wrote, then passes each chunk and the end to its followers', () => {
    const logs = new BuildLogs();
    logs.open('bld_1');
    logs.append('bld_1', 'one\n');
    const seen: BuildLogMessage[] = [];
    const following = logs.follow('bld_1', (message) => seen.push(message));
    assert.ok(following);
    assert.equal(following.replay, 'one\n');
    logs.append('bld_1', 'two\n');
    assert.equal(logs.text('bld_1')?.text, 'one\ntwo\n');
    logs.end('bld_1');
    assert.deepEqual(seen, [{ kind: 'log', text: 'two\n' }, { kind: 'end' }]);
    // Ended: nothing kept, nothing to follow.
    assert.equal(logs.text('bld_1'), undefined);
    assert.equal(logs.follow('bld_1', () => undefined), undefined);
    assert.equal(logs.size, 0);
  });

  it('keeps only the newest bytes of a long log and counts what it dropped', () => {
    const logs = new BuildLogs(10);
    logs.open('bld_2');
    logs.append('bld_2', 'aaaaaa');
    logs.append('bld_2', 'bbbbbb');
    assert.deepEqual(logs.text('bld_2'), { text: 'bbbbbb', droppedBytes: 6 });
    logs.append('bld_2', 'c'.repeat(25));
    assert.deepEqual(logs.text('bld_2'), { text: 'c'.repeat(10), droppedBytes: 6 + 6 + 15 });
    assert.equal(logs.follow('bld_2', () => undefined)?.droppedBytes, 27);
  });

  it('stops calling a follower that stopped', () => {
    const logs = new BuildLogs();
    logs.open('bld_3');
    const seen: BuildLogMessage[] = [];
    const following = logs.follow('bld_3', (message) => seen.push(message));
    following!.stop();
    logs.append('bld_3', 'x');
    logs.end('bld_3');
    assert.deepEqual(seen, []);
  });
});
