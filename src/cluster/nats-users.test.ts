import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { workerInboxPrefix, workerPasswordVariable, workerSubscribeSubjects, workerUserEntry } from './nats-users.js';

describe('a NATS user per worker', () => {
  it("subscribes only to the worker's own runs, cancels, id question and inboxes (and delete notices)", () => {
    assert.deepEqual(workerSubscribeSubjects('wk-a'), ['kindling.workers.wk-a.invoke', 'kindling.workers.wk-a.cancel', 'kindling.workers.wk-a.ping', 'kindling.functions.deleted', '_INBOX_WORKERS.wk-a.>']);
    assert.ok(workerSubscribeSubjects('wk-a').every((subject) => !subject.includes('*') && subject !== '_INBOX_WORKERS.>'));
    assert.equal(workerInboxPrefix('wk-a'), '_INBOX_WORKERS.wk-a');
  });

  it('is an entry of authorization.conf with its password from the environment; an id that is no subject token is refused', () => {
    const entry = workerUserEntry('gpu_1');
    assert.match(entry, /^\{ user: "kindling-worker-gpu_1", password: \$KINDLING_WORKER_gpu_5F1_PASSWORD, permissions: \{ publish: \$KINDLING_WORKER_PUBLISH, subscribe: \[/);
    // Ids that differ by case, "-" or "_" get variables of their own (one password each).
    const variables = ['wk-a', 'wk_a', 'WK-A', 'wk_2Da'].map(workerPasswordVariable);
    assert.equal(new Set(variables).size, 4, variables.join(' '));
    assert.equal(workerPasswordVariable('wk-a'), 'KINDLING_WORKER_wk_2Da_PASSWORD');
    for (const bad of ['', 'a.b', 'a*', 'a>', 'with space', 'x'.repeat(129)]) assert.throws(() => workerUserEntry(bad), /is not a node id/, bad);
  });
});
