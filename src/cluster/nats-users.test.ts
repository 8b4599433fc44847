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
    assert.match(entry, /^\{ user: "kindling-worker-gpu_1", password: \$KINDLING_WORKER_GPU_1_PASSWORD, permissions: \{ publish: \$KINDLING_WORKER_PUBLISH, subscribe: \[/);
    assert.equal(workerPasswordVariable('wk-a'), 'KINDLING_WORKER_WK_A_PASSWORD');
    for (const bad of ['', 'a.b', 'a*', 'a>', 'with space', 'x'.repeat(129)]) assert.throws(() => workerUserEntry(bad), /is not a node id/, bad);
  });
});
