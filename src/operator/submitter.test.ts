import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Hex } from 'viem';
import { KindlingError } from '../core/errors.js';
import { NonceManager } from './nonce-manager.js';
import { ResultStore } from './result-store.js';
import { Submitter, type ContractCall, type TxChain, type TxReceipt } from './submitter.js';

const revert = (errorName: string): Error => Object.assign(new Error(`reverted: ${errorName}`), { cause: { name: 'ContractFunctionRevertedError', data: { errorName } } });
const transient = (): Error => Object.assign(new Error('HTTP request failed'), { name: 'HttpRequestError' });

/** A chain whose node accepts nonces only in sequence (a gap or a reuse throws), like a real one. */
class FakeTxChain implements TxChain {
  readonly address = '0x00000000000000000000000000000000000000c1';
  nonce = 0;
  sent: { call: ContractCall; nonce: number; gas: bigint }[] = [];
  /** Every nonce a send carried, accepted or not (a real node queues a nonce beyond a gap without an error). */
  tried: number[] = [];
  estimate: (call: ContractCall) => Promise<bigint> = async () => 100_000n;
  failSends = 0;
  balanceWei = 7n;
  async estimateGas(call: ContractCall): Promise<bigint> {
    return this.estimate(call);
  }
  async send(call: ContractCall, tx: { gas: bigint; nonce: number }): Promise<Hex> {
    // Give other sends a chance to interleave, as network I/O would.
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 5));
    this.tried.push(tx.nonce);
    if (this.failSends > 0) {
      this.failSends--;
      throw transient();
    }
    if (tx.nonce !== this.nonce) throw Object.assign(new Error(`nonce ${tx.nonce}, expected ${this.nonce}`), { name: tx.nonce < this.nonce ? 'NonceTooLowError' : 'NonceTooHighError' });
    this.nonce++;
    this.sent.push({ call, nonce: tx.nonce, gas: tx.gas });
    return `0x${tx.nonce.toString(16).padStart(64, '0')}`;
  }
  async waitForReceipt(): Promise<TxReceipt> {
    return { status: 'success', blockNumber: 1n, blockHash: '0x01' };
  }
  async balance(): Promise<bigint> {
    return this.balanceWei;
  }
}

const JOBS = '0x00000000000000000000000000000000000000j1'.replace('j', 'a') as `0x${string}`;

function submitter(chain: FakeTxChain, maxGas = 5_000_000n): Submitter {
  return new Submitter({ chain, nonces: new NonceManager({ pendingCount: async () => chain.nonce }), maxGas, baseDelayMs: 1 });
}

describe('Submitter and NonceManager', () => {
  it('a transaction not mined in time (dropped from the pool) is sent again with its nonce read from the node: no gap', async () => {
    const chain = new FakeTxChain();
    let drops = 1;
    chain.waitForReceipt = async () => {
      if (drops-- > 0) {
        chain.nonce--; // the node dropped it: its nonce is free again
        throw Object.assign(new Error('Timed out while waiting for transaction'), { name: 'WaitForTransactionReceiptTimeoutError' });
      }
      return { status: 'success', blockNumber: 1n, blockHash: '0x01' };
    };
    const sub = submitter(chain);
    assert.equal((await sub.submitResult(JOBS, [], 0n, 0n, '0x01')).kind, 'submitted');
    assert.equal((await sub.submitResult(JOBS, [], 0n, 1n, '0x01')).kind, 'submitted');
    assert.deepEqual(chain.tried, [0, 0, 1], 'the lost nonce is used again, never skipped');
  });

  it('keeps one gap-free nonce sequence under 50 concurrent submissions', async () => {
    const chain = new FakeTxChain();
    const sub = submitter(chain);
    const outcomes = await Promise.all(Array.from({ length: 50 }, (_, i) => sub.submitResult(JOBS, [], 0n, BigInt(i), '0x01')));
    assert.ok(outcomes.every((outcome) => outcome.kind === 'submitted'));
    assert.deepEqual(chain.sent.map((tx) => tx.nonce), Array.from({ length: 50 }, (_, i) => i));
  });

  it('resyncs the nonce after a failed send and retries transient failures', async () => {
    const chain = new FakeTxChain();
    const sub = submitter(chain);
    await sub.submitResult(JOBS, [], 0n, 0n, '0x01');
    chain.failSends = 2;
    // Another sender used the account meanwhile: the local count is stale, the node's pending count is not.
    chain.nonce += 3;
    const outcome = await sub.submitResult(JOBS, [], 0n, 1n, '0x01');
    assert.equal(outcome.kind, 'submitted');
    assert.equal(chain.sent.at(-1)!.nonce, 4);
  });

  it('maps reverts: JobAlreadyCompleted counts as success, NotAssignedOperator and UnknownJobCall send nothing', async () => {
    const chain = new FakeTxChain();
    const sub = submitter(chain);
    for (const [name, kind] of [['JobAlreadyCompleted', 'already-completed'], ['NotAssignedOperator', 'not-assigned'], ['UnknownJobCall', 'unknown-call']] as const) {
      chain.estimate = async () => {
        throw revert(name);
      };
      assert.equal((await sub.submitResult(JOBS, [], 0n, 0n, '0x01')).kind, kind);
    }
    assert.equal(chain.sent.length, 0);
  });

  it('caps gas: 20 % headroom up to --max-gas, and an estimate above it is OPERATOR_GAS_CAP', async () => {
    const chain = new FakeTxChain();
    chain.estimate = async () => 900_000n;
    await submitter(chain, 1_000_000n).submitResult(JOBS, [], 0n, 0n, '0x01');
    assert.equal(chain.sent[0]!.gas, 1_000_000n);
    chain.estimate = async () => 1_000_001n;
    await assert.rejects(submitter(chain, 1_000_000n).submitResult(JOBS, [], 0n, 1n, '0x01'), (error: KindlingError) => error.code === 'OPERATOR_GAS_CAP');
  });

  it('out of funds is OPERATOR_OUT_OF_FUNDS naming the address and balance', async () => {
    const chain = new FakeTxChain();
    chain.estimate = async () => {
      throw Object.assign(new Error('insufficient funds for gas * price + value'), { name: 'InsufficientFundsError' });
    };
    await assert.rejects(submitter(chain).submitResult(JOBS, [], 0n, 0n, '0x01'), (error: KindlingError) => {
      assert.equal(error.code, 'OPERATOR_OUT_OF_FUNDS');
      assert.match(error.message, new RegExp(`${chain.address}.*balance 7 wei`));
      assert.deepEqual(error.details, { address: chain.address, balanceWei: '7' });
      return true;
    });
  });

  it('gives up on a node that stays unreachable, with its error', async () => {
    const chain = new FakeTxChain();
    let tries = 0;
    chain.estimate = async () => {
      tries++;
      throw transient();
    };
    await assert.rejects(new Submitter({ chain, nonces: new NonceManager({ pendingCount: async () => 0 }), attempts: 3, baseDelayMs: 1 }).submitResult(JOBS, [], 0n, 0n, '0x01'), /HTTP request failed/);
    assert.equal(tries, 3);
  });
});

describe('ResultStore', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('stores a result with its sha256, serves it, and rejects ids that are not decimal uint64s', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-results-'));
    dirs.push(dir);
    const store = new ResultStore({ dir });
    const bytes = new TextEncoder().encode('x'.repeat(100_000));
    const stored = await store.put(3n, 7n, bytes);
    assert.equal(stored.sha256, `0x${createHash('sha256').update(bytes).digest('hex')}`);
    assert.equal(stored.sizeBytes, 100_000);
    const opened = await store.open('3', '7');
    assert.ok(opened);
    opened.stream.destroy();
    assert.equal(opened.sizeBytes, 100_000);
    assert.equal(await store.open('3', '8'), null);
    for (const bad of ['../3', '07', '-1', '1e3', '3/7']) assert.equal(await store.open('3', bad), null, bad);
    assert.equal((await readFile(join(dir, '3', '7'))).length, 100_000);
  });

  it('is bounded by total size (oldest go first) and by age', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-results-'));
    dirs.push(dir);
    let now = Date.now();
    const store = new ResultStore({ dir, maxTotalBytes: 2500, maxAgeMs: 60_000, now: () => now });
    for (let i = 0n; i < 3n; i++) {
      await store.put(0n, i, new Uint8Array(1000));
      // Distinct mtimes, oldest first.
      await utimes(join(dir, '0', i.toString()), new Date(now / 1000 - 100 + Number(i)), new Date(now - 100_000 + Number(i) * 1000));
    }
    await store.put(0n, 3n, new Uint8Array(1000));
    assert.equal(await store.open('0', '0'), null, 'the oldest went to keep the total under 2500 bytes');
    assert.equal(await store.open('0', '1'), null);
    const kept = await store.open('0', '3');
    assert.ok(kept);
    kept.stream.destroy();
    now += 120_000;
    assert.equal(await store.open('0', '3'), null, 'past its age a result is not served');
  });
});
