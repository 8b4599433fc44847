import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { checkWorkdir } from './execution-service.js';

test('work dirs: /work, anything under /tmp, or a top-level directory that is not a system one', () => {
  for (const ok of ['/work', '/tmp', '/tmp/a/b', '/app', '/srv', '/home']) assert.equal(checkWorkdir(ok), ok);
  const rejected = ['work', '/', '/work/', '/tmp/../etc', '/a//b', '/etc', '/usr', '/proc', '/dev', '/sys', '/.kindling', '/work/sub', '/srv/app', '/bin'];
  for (const bad of rejected) {
    assert.throws(
      () => checkWorkdir(bad),
      (error: unknown) => error instanceof KindlingError && error.code === 'VALIDATION_FAILED' && /use \/work/.test(error.message),
      bad,
    );
  }
});
