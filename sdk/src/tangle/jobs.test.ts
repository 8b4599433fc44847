import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toFunctionSelector } from 'viem';
import {
  JOBS,
  decodeJobInputs,
  decodeJobResult,
  encodeJobError,
  encodeJobInputs,
  encodeJobOutput,
  encodeResultRef,
} from './jobs.js';

test('the job table keeps the original blueprint indices and argument counts', () => {
  assert.deepEqual(
    JOBS.map((j) => [j.index, j.name, j.inputs.length, j.outputs.map((o) => o.type).join(',')]),
    [
      [0, 'execute_function', 4, 'bytes'],
      [1, 'execute_advanced', 8, 'bytes'],
      [2, 'create_snapshot', 3, 'string'],
      [3, 'restore_snapshot', 1, 'string'],
      [4, 'create_branch', 2, 'string'],
      [5, 'merge_branches', 2, 'string'],
      [6, 'start_instance', 6, 'string'],
      [7, 'stop_instance', 1, 'bool'],
      [8, 'pause_instance', 1, 'string'],
      [9, 'resume_instance', 1, 'string'],
      [10, 'expose_port', 4, 'string'],
      [11, 'upload_files', 3, 'uint64'],
    ],
  );
});

test('inputs round-trip, and job 1 accepts both the original eight arguments and a ninth memoryMb', () => {
  const args0 = ['alpine:latest', ['echo', 'hi'], [], '0x0102'];
  assert.deepEqual(decodeJobInputs(0, encodeJobInputs(0, args0)), args0);
  const eight = ['alpine', ['sh', '-c', 'x'], ['A=1'], '0x', 'persistent', '', '', 5n];
  assert.deepEqual(decodeJobInputs(1, encodeJobInputs(1, eight)), [...eight, 0]);
  assert.deepEqual(decodeJobInputs(1, encodeJobInputs(1, [...eight, 256])), [...eight, 256]);
  assert.throws(() => decodeJobInputs(0, '0x1234'));
  assert.throws(() => encodeJobInputs(12, []), /unknown job index 12/);
});

test('outputs, errors and references decode to what was encoded and are never confused', () => {
  assert.deepEqual(decodeJobResult(0, encodeJobOutput(0, ['0x68690a'])), { kind: 'output', values: ['0x68690a'] });
  assert.deepEqual(decodeJobResult(7, encodeJobOutput(7, [true])), { kind: 'output', values: [true] });
  assert.deepEqual(decodeJobResult(11, encodeJobOutput(11, [5n])), { kind: 'output', values: [5n] });
  assert.deepEqual(decodeJobResult(0, encodeJobError('INPUT_UNDECODABLE', 'bad')), {
    kind: 'error',
    code: 'INPUT_UNDECODABLE',
    message: 'bad',
  });
  const sha = `0x${'ab'.repeat(32)}` as const;
  assert.deepEqual(decodeJobResult(0, encodeResultRef(sha, 10n, 'http://x/r/1')), {
    kind: 'ref',
    sha256: sha,
    sizeBytes: 10n,
    url: 'http://x/r/1',
  });
  // The envelopes' selectors are not zero, which is what keeps them apart from outputs.
  for (const sig of ['KindlingJobError(string,string)', 'KindlingResultRef(bytes32,uint64,string)']) {
    assert.notEqual(toFunctionSelector(sig), '0x00000000');
  }
});
