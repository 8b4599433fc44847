/**
 * Reads the chain for the operator: JobSubmitted of its service (jobs contract) and JobAssigned / JobReleased (service
 * manager), from the persisted cursor up to `head - confirmations`, in ranges of at most `maxBlockRange` blocks. Only
 * polling (eth_blockNumber, eth_getBlockByNumber, eth_getLogs): a WebSocket, when given, only wakes it earlier.
 *
 * Reorgs: before each read the cursor's block hash is compared with the chain's; when it differs, the kept read
 * positions are walked back to the newest one the chain still has (the common ancestor), what was read after it is
 * forgotten (CursorStore.rewind) and read again from there.
 */
import { parseAbi, type Address, type Hex } from 'viem';
import { TANGLE_JOBS_ABI } from '@kindling/sdk/tangle';
import type { AssignmentEvent, BlockRef, CallRecord, CursorStore } from './cursor-store.js';

/** The service manager's events (the spec of the FaaS blueprint's manager); the operator needs nothing else of it. */
export const SERVICE_MANAGER_EVENTS_ABI = parseAbi([
  'event JobAssigned(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint64 deadline)',
  'event JobReleased(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint8 reason)',
]);

export type NewCall = Omit<CallRecord, 'state' | 'result'>;

/** What the watcher asks of the chain; `viemWatcherChain` is the real one, tests pass a fake. */
export interface WatcherChain {
  blockNumber(): Promise<bigint>;
  /** The hash of the canonical block at `number`, or null when there is none (the chain is shorter now). */
  blockHash(number: bigint): Promise<Hex | null>;
  /** JobSubmitted of `serviceId` in blocks from..to (inclusive). */
  jobSubmittedLogs(from: bigint, to: bigint): Promise<NewCall[]>;
  /** JobAssigned / JobReleased of `serviceId` in blocks from..to (inclusive). */
  assignmentLogs(from: bigint, to: bigint): Promise<AssignmentEvent[]>;
}

export interface WatcherOptions {
  chain: WatcherChain;
  store: CursorStore;
  /** Blocks a log must be under the head before it is read; 0 reads the head itself. */
  confirmations: number;
  /** First block to read when there is no cursor (a fresh data dir). Default 0. */
  startBlock?: bigint;
  /** Most blocks one eth_getLogs covers (RPC providers cap it). Default 2000. */
  maxBlockRange?: bigint;
  /** Block hashes asked at once while checking a range's logs (the JSON-RPC batch size, or a few without). Default 64. */
  readsAtOnce?: number;
  now?: () => number;
}

export interface PollResult {
  /** Calls read for the first time (or again after a reorg). */
  newCalls: bigint[];
  /** Calls forgotten because a reorg removed their block (running ones must stop and post nothing). */
  droppedCalls: bigint[];
  /** The block read up to (the cursor), or null when nothing is confirmed yet. */
  cursor: BlockRef | null;
  /** Whether the read reached head - confirmations (false: more ranges are waiting; poll again at once). */
  caughtUp: boolean;
}

export class Watcher {
  private readonly options: Required<Omit<WatcherOptions, 'now'>> & { now: () => number };

  constructor(options: WatcherOptions) {
    this.options = { startBlock: 0n, maxBlockRange: 2000n, readsAtOnce: 64, now: Date.now, ...options };
  }

  /** One step: checks the cursor for a reorg, then reads at most one range. Never runs two at once (the caller's loop). */
  async poll(): Promise<PollResult> {
    const { chain, store } = this.options;
    let droppedCalls: bigint[] = [];
    let cursor = store.cursor();
    if (cursor !== null) {
      const hash = await chain.blockHash(cursor.number);
      if (hash !== cursor.hash) {
        const ancestor = await this.commonAncestor(cursor.number);
        droppedCalls = store.rewind(ancestor, this.options.now());
        cursor = ancestor;
      }
    }
    const head = await chain.blockNumber();
    const safe = head - BigInt(this.options.confirmations);
    const from = cursor === null ? this.options.startBlock : cursor.number + 1n;
    if (safe < from) return { newCalls: [], droppedCalls, cursor, caughtUp: true };
    const to = from + this.options.maxBlockRange - 1n < safe ? from + this.options.maxBlockRange - 1n : safe;
    const [calls, events] = await Promise.all([chain.jobSubmittedLogs(from, to), chain.assignmentLogs(from, to)]);
    const toHash = await chain.blockHash(to);
    // Every log must come from the block the cursor will vouch for (or an ancestor of it on the same chain): a reorg
    // between the reads shows as a log whose block hash is not the chain's now; read the range again next time.
    if (toHash === null) return { newCalls: [], droppedCalls, cursor, caughtUp: false };
    // The hashes of the logs' blocks, asked readsAtOnce at a time (one round trip each with JSON-RPC batching, not one
    // per block: with a block per transaction a range holds hundreds).
    const logs = [...calls, ...events];
    const numbers = [...new Set(logs.map((log) => log.blockNumber))].filter((number) => number !== to);
    const blockHashes = new Map<bigint, Hex | null>([[to, toHash]]);
    for (let at = 0; at < numbers.length; at += this.options.readsAtOnce) {
      const part = numbers.slice(at, at + this.options.readsAtOnce);
      const hashes = await Promise.all(part.map((number) => chain.blockHash(number)));
      part.forEach((number, i) => blockHashes.set(number, hashes[i]!));
    }
    if (logs.some((log) => blockHashes.get(log.blockNumber) !== log.blockHash)) return { newCalls: [], droppedCalls, cursor, caughtUp: false };
    const next = { number: to, hash: toHash };
    const newCalls = store.commitRange(next, calls, events, this.options.now());
    return { newCalls, droppedCalls, cursor: next, caughtUp: to === safe };
  }

  /** The newest kept read position the chain still has, or null (read everything again from the start block). */
  private async commonAncestor(below: bigint): Promise<BlockRef | null> {
    for (const known of this.options.store.knownBlocks(below)) {
      if ((await this.options.chain.blockHash(known.number)) === known.hash) return known;
    }
    return null;
  }
}

/** The minimal public-client surface the real WatcherChain uses (a viem PublicClient has it). */
export interface WatcherPublicClient {
  getBlockNumber(args?: { cacheTime?: number }): Promise<bigint>;
  getBlock(args: { blockNumber: bigint }): Promise<{ hash: Hex | null }>;
  getLogs(args: never): Promise<unknown[]>;
}

interface RawLog {
  blockNumber: bigint;
  blockHash: Hex;
  logIndex: number;
  eventName: string;
  args: Record<string, unknown>;
}

/** The WatcherChain over a viem public client (HTTP or WebSocket transport). */
export function viemWatcherChain(client: WatcherPublicClient, addresses: { jobsContract: Address; serviceManager: Address; serviceId: bigint }): WatcherChain {
  const getLogs = client.getLogs as unknown as (args: object) => Promise<RawLog[]>;
  return {
    // cacheTime 0: viem caches the block number for a polling interval by default, which would hide new blocks.
    blockNumber: () => client.getBlockNumber({ cacheTime: 0 }),
    async blockHash(number) {
      try {
        return (await client.getBlock({ blockNumber: number })).hash;
      } catch (error) {
        if ((error as { name?: string }).name === 'BlockNotFoundError') return null;
        throw error;
      }
    },
    async jobSubmittedLogs(from, to) {
      const logs = await getLogs({
        address: addresses.jobsContract,
        event: TANGLE_JOBS_ABI.find((item) => item.type === 'event' && item.name === 'JobSubmitted'),
        args: { serviceId: addresses.serviceId },
        fromBlock: from,
        toBlock: to,
        strict: true,
      });
      return logs.map((log) => ({
        callId: log.args.callId as bigint,
        jobIndex: Number(log.args.jobIndex),
        caller: (log.args.caller as Address).toLowerCase() as Address,
        inputs: log.args.inputs as Hex,
        blockNumber: log.blockNumber,
        blockHash: log.blockHash,
      }));
    },
    async assignmentLogs(from, to) {
      const logs = await getLogs({
        address: addresses.serviceManager,
        events: SERVICE_MANAGER_EVENTS_ABI,
        args: { serviceId: addresses.serviceId },
        fromBlock: from,
        toBlock: to,
        strict: true,
      });
      return logs.map((log) => ({
        callId: log.args.callId as bigint,
        kind: log.eventName === 'JobAssigned' ? ('assigned' as const) : ('released' as const),
        operator: (log.args.operator as Address).toLowerCase() as Address,
        deadline: log.eventName === 'JobAssigned' ? (log.args.deadline as bigint) : 0n,
        reason: log.eventName === 'JobReleased' ? Number(log.args.reason) : 0,
        blockNumber: log.blockNumber,
        blockHash: log.blockHash,
        logIndex: log.logIndex,
      }));
    },
  };
}
