import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ERROR_CODES, KindlingError, isStorageFull, storageFullError } from './errors.js';

const errno = (code: string, message = code): NodeJS.ErrnoException => Object.assign(new Error(message), { code });

describe('storage full', () => {
  it('recognises a full disk from errno, SQLite and causes of wrapped errors', () => {
    assert.equal(isStorageFull(errno('ENOSPC')), true);
    assert.equal(isStorageFull(errno('EDQUOT')), true);
    assert.equal(isStorageFull(errno('SQLITE_FULL', 'database or disk is full')), true);
    assert.equal(isStorageFull(errno('SQLITE_IOERR_WRITE', 'disk I/O error: no space left')), true);
    assert.equal(isStorageFull(new KindlingError('EXECUTOR_FAILED', 'could not start the sandbox', { cause: errno('ENOSPC') })), true);
  });

  it('leaves other errors alone', () => {
    assert.equal(isStorageFull(errno('EACCES')), false);
    assert.equal(isStorageFull(errno('SQLITE_IOERR_WRITE', 'disk I/O error')), false);
    assert.equal(isStorageFull(new Error('no code')), false);
    assert.equal(isStorageFull(null), false);
    assert.equal(storageFullError(errno('ECONNREFUSED')), null);
  });

  it('becomes a retryable 507 STORAGE_FULL that keeps the original error as its cause', () => {
    const original = errno('SQLITE_FULL', 'database or disk is full');
    const error = storageFullError(original)!;
    assert.equal(error.code, 'STORAGE_FULL');
    assert.equal(error.statusCode, 507);
    assert.equal(error.retryable, true);
    assert.equal(error.cause, original);
    assert.ok(error.retryAfterSeconds !== undefined);
    assert.equal(ERROR_CODES.SANDBOX_START_TIMEOUT.statusCode, 503);
    assert.equal(ERROR_CODES.SANDBOX_START_TIMEOUT.retryable, true);
  });
});
