/** Fakes for the operator's unit tests. */
import type { Hex } from 'viem';
import type { AssignmentEvent } from './cursor-store.js';
import type { NewCall, WatcherChain } from './watcher.js';

/** An in-memory chain: blocks with hashes, job calls and assignment events, and a reorg that replaces the tip. */
export class FakeChain implements WatcherChain {
  blocks: { hash: Hex; calls: NewCall[]; events: AssignmentEvent[] }[] = [{ hash: '0xgenesis', calls: [], events: [] }];
  private fork = 0;

  mine(calls: { callId: bigint; jobIndex?: number; inputs?: Hex }[] = [], events: Omit<AssignmentEvent, 'blockNumber' | 'blockHash' | 'logIndex'>[] = []): bigint {
    const number = BigInt(this.blocks.length);
    const hash = `0x${this.fork}b${number}` as Hex;
    this.blocks.push({
      hash,
      calls: calls.map((call) => ({ callId: call.callId, jobIndex: call.jobIndex ?? 0, caller: '0x00000000000000000000000000000000000000aa', inputs: call.inputs ?? '0x01', blockNumber: number, blockHash: hash })),
      events: events.map((event, logIndex) => ({ ...event, blockNumber: number, blockHash: hash, logIndex })),
    });
    return number;
  }

  /** Removes the blocks after `keep` (a reorg); blocks mined after this get new hashes. */
  reorgTo(keep: bigint): void {
    this.blocks.length = Number(keep) + 1;
    this.fork++;
  }

  async blockNumber(): Promise<bigint> {
    return BigInt(this.blocks.length - 1);
  }
  async blockHash(number: bigint): Promise<Hex | null> {
    return this.blocks[Number(number)]?.hash ?? null;
  }
  async jobSubmittedLogs(from: bigint, to: bigint): Promise<NewCall[]> {
    return this.blocks.slice(Number(from), Number(to) + 1).flatMap((block) => block.calls);
  }
  async assignmentLogs(from: bigint, to: bigint): Promise<AssignmentEvent[]> {
    return this.blocks.slice(Number(from), Number(to) + 1).flatMap((block) => block.events);
  }
}

