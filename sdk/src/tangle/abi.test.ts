import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toEventSelector, toFunctionSelector } from 'viem';
import { formatAbiItem } from 'viem/utils';
import { BLUEPRINT_SERVICE_MANAGER_HOOKS_ABI, TANGLE_JOBS_ABI } from './abi.js';

// Selectors and topics of tnt-core at commit 8a2b24c: a change to the pinned interface upstream must fail here.
const EXPECTED: Record<string, string> = {
  'getJobCall(uint64,uint64)': '0xa672bc0a',
  'submitJob(uint64,uint8,bytes)': '0x3413e8ee',
  'submitResult(uint64,uint64,bytes)': '0x2d07e655',
  'submitResults(uint64,uint64[],bytes[])': '0xaacdba9f',
  'JobCompleted(uint64,uint64)': '0x60a7649f6e93e7a3ce1dc9729c20e3d95dce28c6a6bd957cde09d8a1cb37c19f',
  'JobResultSubmitted(uint64,uint64,address,bytes)': '0x8a04f99fe23284e874e8dd017345248279cc59701695e73bcdbeb6241bcd2ac6',
  'JobSubmitted(uint64,uint64,uint8,address,bytes)': '0xde37cc48d21778e1c9a075c4e41c5aff6918c3ea6151221f0af3ce8121a29db5',
  'onBlueprintCreated(uint64,address,address)': '0x0b6535d7',
  'onJobCall(uint64,uint8,uint64,bytes)': '0x9838caa3',
  'onJobResult(uint64,uint8,uint64,address,bytes32,bytes)': '0xe649fc03',
  'onRegister(address,bytes)': '0x67793cc6',
  'onUnregister(address)': '0x151a4576',
};

test('the pinned Tangle interface subset has the selectors and event topics of the pinned upstream commit', () => {
  const actual: Record<string, string> = {};
  for (const item of [...TANGLE_JOBS_ABI, ...BLUEPRINT_SERVICE_MANAGER_HOOKS_ABI]) {
    const signature = formatAbiItem(item).replace(/^(function|event) /, '');
    actual[signature] = item.type === 'event' ? toEventSelector(item) : toFunctionSelector(item);
  }
  assert.deepEqual(actual, EXPECTED);
});

test('the indexed event fields the operator filters on are still indexed', () => {
  const submitted = TANGLE_JOBS_ABI.find((i) => i.type === 'event' && i.name === 'JobSubmitted');
  assert.ok(submitted && submitted.type === 'event');
  assert.deepEqual(
    submitted.inputs.map((i) => [i.name, i.indexed]),
    [
      ['serviceId', true],
      ['callId', true],
      ['jobIndex', true],
      ['caller', false],
      ['inputs', false],
    ],
  );
  const getJobCall = TANGLE_JOBS_ABI.find((i) => i.type === 'function' && i.name === 'getJobCall');
  assert.ok(getJobCall && getJobCall.type === 'function');
  assert.deepEqual(
    getJobCall.outputs[0]?.type === 'tuple' ? getJobCall.outputs[0].components.map((c) => `${c.type} ${c.name}`) : [],
    ['uint8 jobIndex', 'address caller', 'uint64 createdAt', 'uint32 resultCount', 'bool completed', 'bool isRFQ', 'uint256 payment'],
  );
});
