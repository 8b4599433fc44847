/**
 * The operator loop: reads the chain (Watcher), runs the calls assigned to this operator's address through the job
 * runner (at most `capacity` at once), posts their results (Submitter), and does keeper duty: an assignment of another
 * operator past its deadline is released (`releaseTimedOut`), so the job of an operator that died is reassigned.
 *
 * Every step is recorded in the CursorStore before it is taken, so a restart resumes: seen calls are run, submitted
 * results are sent again ("already completed" is success), and a call that was running when the process died is
 * answered with a JOB_INTERRUPTED error envelope instead of being run a second time (its first run may have had
 * effects: a sandbox made, files written). Before running and before submitting, the call is checked on chain
 * (completed? still assigned to us? its block still canonical?), so nothing runs or posts for a job another operator
 * answered or a reorg removed.
 */
import type { Address, Hex } from 'viem';
import { hexToBytes, size as hexSize } from 'viem';
import type { Logger } from 'pino';
import { encodeJobError, encodeResultRef } from '@kindling/sdk/tangle';
import type { CallRecord, CursorStore } from './cursor-store.js';
import type { ResultStore } from './result-store.js';
import type { Submitter } from './submitter.js';
import type { Watcher } from './watcher.js';
import { SERVICE_MANAGER_ABI, JOBS_CONTRACT_ABI } from './chain-abi.js';

/** The job runner's contract (src/operator/job-runner.ts): never throws for bad input or a failing job (error envelope). */
export interface OperatorJob {
  serviceId: bigint;
  callId: bigint;
  jobIndex: number;
  caller: Address;
  inputs: Hex;
}
export interface OperatorJobRunner {
  run(job: OperatorJob, signal: AbortSignal): Promise<{ result: Hex; outputBytes?: Uint8Array }>;
}

/** Reads of contract state the operator checks before running and before submitting. */
export interface OperatorChain {
  /** getJobCall(...).completed; null when the chain has no such call (UnknownJobCall: a reorg removed it). */
  jobCompleted(callId: bigint): Promise<boolean | null>;
  /** assignmentOf(serviceId, callId) of the service manager. */
  assignmentOf(callId: bigint): Promise<{ operator: Address; deadline: bigint; done: boolean }>;
  blockHash(number: bigint): Promise<Hex | null>;
  /** The latest block's timestamp (unix seconds): deadlines are in block time. Without it, block time is taken as wall time. */
  latestBlockTime?(): Promise<bigint>;
}

export interface OperatorOptions {
  serviceId: bigint;
  jobsContract: Address;
  serviceManager: Address;
  watcher: Watcher;
  store: CursorStore;
  submitter: Submitter;
  chain: OperatorChain;
  runner: OperatorJobRunner;
  resultStore: ResultStore;
  /** The public URL of a stored large result (GET /v1/operator/results/:serviceId/:callId on this server). */
  resultUrl: (serviceId: bigint, callId: bigint) => string;
  /** Jobs run at once (--capacity; also the capacity registered on chain). */
  capacity: number;
  /** Results larger than this go to the result store and on chain as a KindlingResultRef. Default 16 KiB. */
  maxResultBytes?: number;
  /**
   * Most results one transaction carries (`submitResults`). Results that are ready while an earlier transaction
   * waits for its receipt go together in the next one, so the chain path costs one estimate, one send and one
   * receipt per batch instead of per job. Default 32; 1 sends each result alone.
   */
  maxBatchResults?: number;
  /** Most result bytes one batch carries (calldata costs gas per byte; node providers cap transaction size). Default 64 KiB. */
  maxBatchBytes?: number;
  /** Time between reads of the chain when nothing wakes the loop earlier. Default 500 ms. */
  pollIntervalMs?: number;
  /** The least time between two attempts for one call that failed to submit, or one keeper release. Default 1000 ms. */
  retryDelayMs?: number;
  /**
   * A running job is aborted this long before its assignment's deadline (converted from block time to wall time):
   * block timestamps drift by seconds, and past the deadline the job may be given to another operator. Default 2000 ms.
   */
  deadlineMarginMs?: number;
  /** Block hashes asked of the node at once (the JSON-RPC batch size, or a few without batching). Default 64. */
  readsAtOnce?: number;
  /** Keeper duty (release others' timed-out assignments). Default on. */
  keeper?: boolean;
  /**
   * Time between two keeper rounds. The keeper runs on its own timer, apart from the chain-read/job loop: a release
   * waits for its receipt, and a slow node must not hold up reading new jobs. Default 1000 ms.
   */
  keeperIntervalMs?: number;
  logger: Logger;
  now?: () => number;
}

import { DEFAULT_MAX_RESULT_BYTES } from './defaults.js';

export const DEFAULT_MAX_BATCH_RESULTS = 32;
export const DEFAULT_MAX_BATCH_BYTES = 64 * 1024;

export { DEFAULT_MAX_RESULT_BYTES };

const MAX_TIMER_MS = 2 ** 31 - 1;

/** The abort reason of a job stopped at its assignment's deadline. */
class DeadlineReached extends Error {
  constructor(callId: bigint) {
    super(`call ${callId} reached its assignment deadline`);
    this.name = 'DeadlineReached';
  }
}

const RPC_BATCH_HINT = 'the node refused a JSON-RPC batch (too large, or batches not supported): lower --rpc-batch-size, or 0 to send each request alone';

/**
 * Whether a failure looks like the node refusing a JSON-RPC batch as a whole: geth-style "batch too large" /
 * "batch limit exceeded", or an invalid-request error (-32600) for every call of it.
 */
export function rpcBatchRefused(error: unknown): boolean {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 10; at = (at as { cause?: unknown }).cause, depth++) {
    const { name, code, message, details } = at as { name?: unknown; code?: unknown; message?: unknown; details?: unknown };
    if (name === 'InvalidRequestRpcError' || code === -32600) return true;
    if ([message, details].some((text) => typeof text === 'string' && /\bbatch\b/i.test(text))) return true;
  }
  return false;
}

export interface OperatorStats {
  running: number;
  submitted: number;
  alreadyCompleted: number;
  released: number;
  errors: number;
}

export class Operator {
  private readonly options: OperatorOptions & { maxResultBytes: number; pollIntervalMs: number; retryDelayMs: number; deadlineMarginMs: number; readsAtOnce: number; keeperIntervalMs: number; maxBatchResults: number; maxBatchBytes: number; now: () => number };
  private readonly me: string;
  private readonly running = new Map<string, AbortController>();
  /** Calls holding a slot of `capacity`: from scheduling (the checks on chain come first) until their job ends. */
  private slots = 0;
  private readonly busy = new Set<string>();
  /** Results waiting for the next transaction, in the order they became ready. */
  private readonly queued = new Map<string, CallRecord>();
  /** Calls queued or in the transaction being sent: not queued a second time. */
  private readonly sending = new Set<string>();
  /** The one loop sending queued results, if running: one result transaction at a time, the rest batch up behind it. */
  private flushing: Promise<void> | null = null;
  /** Calls whose result transaction is mined but not yet `confirmations` deep, by call id: the block it is in. */
  private readonly confirming = new Map<string, { call: CallRecord; blockNumber: bigint; blockHash: Hex }>();
  private readonly notBefore = new Map<string, number>();
  private readonly keeperTried = new Map<string, number>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private keeperTimer: NodeJS.Timeout | null = null;
  /** The keeper round under way, if any: rounds never overlap (two would send the same release twice). */
  private keeping: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  readonly stats: OperatorStats = { running: 0, submitted: 0, alreadyCompleted: 0, released: 0, errors: 0 };

  constructor(options: OperatorOptions) {
    this.options = { maxResultBytes: DEFAULT_MAX_RESULT_BYTES, pollIntervalMs: 500, retryDelayMs: 1000, deadlineMarginMs: 2000, readsAtOnce: 64, keeperIntervalMs: 1000, maxBatchResults: DEFAULT_MAX_BATCH_RESULTS, maxBatchBytes: DEFAULT_MAX_BATCH_BYTES, now: Date.now, keeper: true, ...options };
    this.me = options.submitter.address.toLowerCase();
  }

  /** Recovers what a previous process left (running -> JOB_INTERRUPTED) and starts the loop. */
  start(): this {
    for (const call of this.options.store.callsIn('running')) {
      const result = encodeJobError('JOB_INTERRUPTED', 'the operator stopped while this job ran, so its outcome is unknown; it is not run again (it may have had effects). Submit the job again');
      this.options.store.transition(call.callId, ['running'], 'submitted', { result, nowMs: this.options.now() });
      this.options.logger.warn({ callId: call.callId.toString() }, 'a job was running when the operator stopped; answering it with JOB_INTERRUPTED');
    }
    this.wake();
    if (this.options.keeper !== false) this.keeperRound();
    return this;
  }

  /** One keeper round now, then the next after keeperIntervalMs; never two at once. */
  private keeperRound(): void {
    if (this.stopped || this.keeping) return;
    this.keeperTimer = null;
    this.keeping = this.keep()
      .catch((error: unknown) => {
        this.stats.errors++;
        this.options.logger.warn({ err: error }, 'a keeper round failed; trying again');
      })
      .finally(() => {
        this.keeping = null;
        if (!this.stopped) this.keeperTimer = setTimeout(() => this.keeperRound(), this.options.keeperIntervalMs);
      });
  }

  /** Reads the chain now (a new head arrived), instead of at the next interval. */
  wake(): void {
    if (this.stopped) return;
    if (this.ticking) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.ticking = this.tick().finally(() => {
      this.ticking = null;
      if (this.stopped) return;
      if (this.again) {
        this.again = false;
        this.wake();
      } else {
        this.timer = setTimeout(() => this.wake(), this.options.pollIntervalMs);
      }
    });
  }

  /** Resolves once no job is running or being submitted (tests, the drain). */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /**
   * Drain: reads no more calls, lets running jobs finish and their results go on chain, then resolves. `abort`
   * stops running jobs at once instead (they post nothing; a restart answers them with JOB_INTERRUPTED).
   */
  async close(options: { abort?: boolean } = {}): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.keeperTimer) clearTimeout(this.keeperTimer);
    this.keeperTimer = null;
    if (options.abort) for (const controller of this.running.values()) controller.abort();
    await this.ticking;
    await this.keeping;
    await this.idle();
  }

  private async tick(): Promise<void> {
    try {
      for (let reads = 0; reads < 50; reads++) {
        const poll = await this.options.watcher.poll();
        for (const callId of poll.droppedCalls) {
          const controller = this.running.get(callId.toString());
          if (controller) {
            this.options.logger.warn({ callId: callId.toString() }, 'a reorg removed the block of a running job: stopping it, posting nothing');
            controller.abort();
          }
        }
        if (poll.droppedCalls.length > 0) this.options.logger.info({ dropped: poll.droppedCalls.map(String), cursor: poll.cursor?.number.toString() }, 'reorg: calls of orphaned blocks forgotten');
        if (poll.caughtUp) break;
      }
    } catch (error) {
      this.options.logger.warn({ err: error, ...(rpcBatchRefused(error) ? { hint: RPC_BATCH_HINT } : {}) }, 'reading the chain failed; trying again');
    }
    try {
      await this.confirm();
      this.schedule();
    } catch (error) {
      this.stats.errors++;
      this.options.logger.warn({ err: error, ...(rpcBatchRefused(error) ? { hint: RPC_BATCH_HINT } : {}) }, 'an operator step failed; trying again');
    }
  }

  private track(promise: Promise<unknown>): void {
    const tracked = promise.catch((error: unknown) => {
      this.stats.errors++;
      this.options.logger.error({ err: error }, 'an operator task failed');
    });
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  private ready(key: string): boolean {
    return !this.busy.has(key) && (this.notBefore.get(key) ?? 0) <= this.options.now();
  }

  private schedule(): void {
    const { store } = this.options;
    for (const call of store.callsIn('submitted')) {
      const key = call.callId.toString();
      if (!this.ready(key) || this.sending.has(key) || this.confirming.has(key)) continue;
      this.enqueue(call);
    }
    if (this.stopped) return;
    const assignments = new Map(store.assignments().map((assignment) => [assignment.callId.toString(), assignment]));
    for (const call of store.callsIn('seen')) {
      const key = call.callId.toString();
      const assignment = assignments.get(key);
      if (assignment?.done) {
        store.transition(call.callId, ['seen'], 'done', { nowMs: this.options.now() });
        continue;
      }
      if (assignment === undefined || assignment.released || assignment.operator !== this.me) continue;
      if (this.slots >= this.options.capacity) break;
      if (!this.ready(key)) continue;
      this.busy.add(key);
      this.slots++;
      let released = false;
      const release = (): void => {
        if (released) return;
        released = true;
        this.slots--;
      };
      this.track(this.run(call, release).finally(() => {
        release();
        this.busy.delete(key);
      }));
    }
  }

  /** Whether the chain still has the block the call was read from (false after a reorg the watcher has not seen yet). */
  private async canonical(call: CallRecord): Promise<boolean> {
    return (await this.options.chain.blockHash(call.blockNumber)) === call.blockHash;
  }

  private later(key: string): void {
    this.notBefore.set(key, this.options.now() + this.options.retryDelayMs);
  }

  /** Checks, runs and submits one call; `release` frees its capacity slot once the job itself has ended. */
  private async run(call: CallRecord, release: () => void): Promise<void> {
    const { store, chain, logger } = this.options;
    const key = call.callId.toString();
    // The reads are independent: asked together they are one round trip (one JSON-RPC batch with those of every job
    // scheduled in the same turn) instead of four. The latest block's time is only needed when the job runs.
    const askedAtMs = this.options.now();
    const latest = this.latestBlockTime();
    const [completed, assignment, canonical] = await Promise.all([chain.jobCompleted(call.callId), chain.assignmentOf(call.callId), this.canonical(call)]);
    if (completed === true) {
      store.transition(call.callId, ['seen'], 'done', { nowMs: this.options.now() });
      return;
    }
    if (completed === null || assignment.done || assignment.operator.toLowerCase() !== this.me || !canonical) {
      // Not (or no longer) ours, or not on the chain as read: the watcher's next reads settle it.
      this.later(key);
      return;
    }
    // Past (or about to pass) its deadline the job may go to another operator: not started, tried again once the
    // chain's assignment changes (reassigned to us: a new deadline).
    const stopAtMs = this.stopTime(assignment.deadline, await latest, askedAtMs);
    if (stopAtMs <= this.options.now()) {
      this.later(key);
      return;
    }
    if (!store.transition(call.callId, ['seen'], 'running', { blockHash: call.blockHash, nowMs: this.options.now() })) return;
    const controller = new AbortController();
    // setTimeout fires at once for a delay over 2^31-1 ms (about 24.8 days): a far deadline is waited for in steps.
    let deadlineTimer: NodeJS.Timeout;
    const armDeadline = (): void => {
      const left = stopAtMs - this.options.now();
      if (left <= 0) controller.abort(new DeadlineReached(call.callId));
      else deadlineTimer = setTimeout(armDeadline, Math.min(left, MAX_TIMER_MS));
    };
    armDeadline();
    this.running.set(key, controller);
    logger.info({ callId: key, jobIndex: call.jobIndex, caller: call.caller }, 'running a job');
    this.stats.running = this.running.size;
    let result: Hex;
    try {
      const job = { serviceId: this.options.serviceId, callId: call.callId, jobIndex: call.jobIndex, caller: call.caller, inputs: call.inputs };
      const outcome = await this.options.runner.run(job, controller.signal).catch((error: unknown): { result: Hex; outputBytes?: Uint8Array } => {
        logger.error({ err: error, callId: key }, 'the job runner failed');
        return { result: encodeJobError('INTERNAL', 'the operator failed to run this job; submit it again') };
      });
      const atDeadline = controller.signal.reason instanceof DeadlineReached;
      if (controller.signal.aborted && !atDeadline) return;
      // Stopped at (or finished close to) the deadline: another operator may have the job now; then nothing is ours
      // to post (the chain would refuse it too), and the call waits as `seen` in case it comes back.
      if (atDeadline || this.options.now() >= stopAtMs) {
        const current = await chain.assignmentOf(call.callId).catch(() => assignment);
        if (current.operator.toLowerCase() !== this.me || current.deadline !== assignment.deadline) {
          this.backToSeen(call, 'the job was reassigned while it ran: posting nothing');
          return;
        }
      }
      if (atDeadline) {
        logger.warn({ callId: key }, 'the job reached its assignment deadline: stopped, answering ASSIGNMENT_DEADLINE_EXCEEDED');
        // An answer, not silence: the same job would run into the same timeout on any operator.
        result = encodeJobError('ASSIGNMENT_DEADLINE_EXCEEDED', `the job was still running ${this.options.deadlineMarginMs} ms before its assignment deadline (the service's assignment timeout) and was stopped; its output is not returned. Make it shorter (job 1's timeoutSecs) and submit it again`);
      } else {
        result = await this.offChainIfLarge(call.callId, outcome);
      }
    } finally {
      clearTimeout(deadlineTimer!);
      this.running.delete(key);
      this.stats.running = this.running.size;
      release();
    }
    if (!store.transition(call.callId, ['running'], 'submitted', { blockHash: call.blockHash, result, nowMs: this.options.now() })) return;
    this.enqueue({ ...call, state: 'submitted', result });
    // A slot is free: the next queued call of ours starts without waiting for the poll interval.
    if (!this.stopped) this.wake();
  }

  /**
   * When to stop a job whose assignment ends at `deadline` (block time, unix seconds), in wall-clock ms: the earlier of
   * two readings (block time as wall time; the deadline's distance from the latest block), less the margin, so a
   * chain whose clock runs ahead (or a stale latest block) does not let the job run past it.
   */
  private stopTime(deadline: bigint, latest: bigint | undefined, askedAtMs: number): number {
    // The latest block was read at or after askedAtMs: measuring from then errs early, never late.
    const now = askedAtMs;
    let at = Number(deadline) * 1000;
    if (latest !== undefined) at = Math.min(at, now + (Number(deadline) - Number(latest)) * 1000);
    return at - this.options.deadlineMarginMs;
  }

  /**
   * The hashes of these blocks (each asked once), `readsAtOnce` at a time: with JSON-RPC batching those go in one
   * request; without, a provider is not sent dozens of requests at once. Rejects when a read fails.
   */
  private async blockHashes(numbers: readonly bigint[]): Promise<Map<bigint, Hex | null>> {
    const distinct = [...new Set(numbers)];
    const hashes = new Map<bigint, Hex | null>();
    for (let at = 0; at < distinct.length; at += this.options.readsAtOnce) {
      const part = distinct.slice(at, at + this.options.readsAtOnce);
      const read = await Promise.all(part.map((number) => this.options.chain.blockHash(number)));
      part.forEach((number, i) => hashes.set(number, read[i]!));
    }
    return hashes;
  }

  /** The latest block's timestamp, or undefined when the chain cannot tell (then block time is taken as wall time). */
  private latestBlockTime(): Promise<bigint | undefined> {
    return this.options.chain.latestBlockTime?.().catch(() => undefined) ?? Promise.resolve(undefined);
  }

  /** A job finished without posting (reassigned meanwhile): `seen` again, run if the chain gives it back. */
  private backToSeen(call: CallRecord, why: string): void {
    this.options.store.transition(call.callId, ['running'], 'seen', { blockHash: call.blockHash, nowMs: this.options.now() });
    this.later(call.callId.toString());
    this.options.logger.warn({ callId: call.callId.toString() }, why);
  }

  /** A result over maxResultBytes goes to the result store; the chain gets its hash, size and URL. */
  private async offChainIfLarge(callId: bigint, outcome: { result: Hex; outputBytes?: Uint8Array }): Promise<Hex> {
    if (hexSize(outcome.result) <= this.options.maxResultBytes) return outcome.result;
    const bytes = outcome.outputBytes ?? hexToBytes(outcome.result);
    const stored = await this.options.resultStore.put(this.options.serviceId, callId, bytes);
    return encodeResultRef(stored.sha256, BigInt(stored.sizeBytes), this.options.resultUrl(this.options.serviceId, callId));
  }

  /** Queues a computed result for the next result transaction; it is not queued again until it has been tried. */
  private enqueue(call: CallRecord): void {
    const key = call.callId.toString();
    if (this.sending.has(key)) return;
    this.sending.add(key);
    this.queued.set(key, call);
    this.kick();
  }

  /** Starts the flush loop unless it runs (or nothing waits); a result queued as the loop ends starts the next one. */
  private kick(): void {
    if (this.flushing || this.queued.size === 0) return;
    const flushing = this.flush().finally(() => {
      this.flushing = null;
      this.kick();
    });
    this.flushing = flushing;
    this.track(flushing);
  }

  /** Sends queued results, a batch at a time, until none is left. */
  private async flush(): Promise<void> {
    while (this.queued.size > 0) {
      const batch: CallRecord[] = [];
      let bytes = 0;
      for (const [key, call] of this.queued) {
        const size = call.result === null ? 0 : hexSize(call.result);
        if (batch.length > 0 && (batch.length >= this.options.maxBatchResults || bytes + size > this.options.maxBatchBytes)) break;
        batch.push(call);
        bytes += size;
        this.queued.delete(key);
      }
      try {
        await this.submitBatch(batch);
      } finally {
        for (const call of batch) this.sending.delete(call.callId.toString());
      }
    }
  }

  /**
   * One `submitResults` transaction for the batch. The contract's batch is all or nothing, so when its estimate
   * reverts (one call completed by someone else, reassigned, or removed by a reorg) or it cannot be sent, each result
   * goes on its own (submit()), which sorts out the one that cannot be posted without holding up the others.
   */
  private async submitBatch(batch: CallRecord[]): Promise<void> {
    if (batch.length === 1) return this.submit(batch[0]!);
    const { logger } = this.options;
    // One block hash per block, not per call (calls of one block share it), asked together. A failed read leaves the
    // batch's calls for later, as a block no longer on the chain would.
    const hashes = await this.blockHashes(batch.map((call) => call.blockNumber)).catch(() => new Map<bigint, Hex | null>());
    const canonical: CallRecord[] = [];
    for (const call of batch) {
      const hash = hashes.get(call.blockNumber);
      if (hash === call.blockHash && call.result !== null) canonical.push(call);
      else this.later(call.callId.toString());
    }
    if (canonical.length <= 1) {
      for (const call of canonical) await this.submit(call);
      return;
    }
    const callIds = canonical.map((call) => call.callId);
    const outcome = await this.options.submitter
      .write({ address: this.options.jobsContract, abi: JOBS_CONTRACT_ABI, functionName: 'submitResults', args: [this.options.serviceId, callIds, canonical.map((call) => call.result!)] })
      .catch((error: unknown) => {
        logger.warn({ err: error, callIds: callIds.map(String), code: (error as { code?: string }).code }, 'a batch of results could not be sent; sending them one by one');
        return null;
      });
    if (outcome?.kind !== 'sent') {
      if (outcome?.kind === 'reverted') logger.info({ callIds: callIds.map(String), errorName: outcome.errorName }, 'a batch of results reverts; sending them one by one');
      await Promise.all(canonical.map((call) => this.submit(call)));
      return;
    }
    for (const call of canonical) {
      const key = call.callId.toString();
      this.stats.submitted++;
      this.confirming.set(key, { call, blockNumber: outcome.blockNumber, blockHash: outcome.blockHash });
      logger.info({ callId: key, outcome: 'submitted', txHash: outcome.txHash, batch: canonical.length }, 'job result');
    }
  }

  private async submit(call: CallRecord): Promise<void> {
    const { store, logger } = this.options;
    const key = call.callId.toString();
    if (call.result === null) return;
    try {
      if (!(await this.canonical(call))) {
        this.later(key);
        return;
      }
      const outcome = await this.options.submitter.submitResult(this.options.jobsContract, JOBS_CONTRACT_ABI, this.options.serviceId, call.callId, call.result);
      if (outcome.kind === 'unknown-call') {
        // The call is gone (reorg); when its block comes back the watcher reads it again and this result goes then.
        this.later(key);
        return;
      }
      if (outcome.kind === 'submitted') {
        this.stats.submitted++;
        // Done only once its block is deep enough (confirm()); a reorg before that sends it again.
        this.confirming.set(key, { call, blockNumber: outcome.blockNumber, blockHash: outcome.blockHash });
      } else {
        if (outcome.kind === 'already-completed') this.stats.alreadyCompleted++;
        store.transition(call.callId, ['submitted'], 'done', { nowMs: this.options.now() });
      }
      logger.info({ callId: key, outcome: outcome.kind, ...(outcome.kind === 'submitted' ? { txHash: outcome.txHash } : {}) }, 'job result');
    } catch (error) {
      this.stats.errors++;
      this.later(key);
      logger.error({ err: error, callId: key, code: (error as { code?: string }).code, ...(rpcBatchRefused(error) ? { hint: RPC_BATCH_HINT } : {}) }, 'submitting a result failed; it is sent again later');
    }
  }

  /**
   * Settles mined results: a transaction whose block the watcher has read past (it is `confirmations` under the
   * head) and which the chain still has makes its call done; one whose block a reorg replaced goes back to the
   * submit queue (submit() checks the call on chain again, so a job someone completed meanwhile is not posted twice),
   * and the nonce is read again, since the transactions of that block are no longer counted.
   */
  private async confirm(): Promise<void> {
    if (this.confirming.size === 0) return;
    const cursor = this.options.store.cursor();
    if (cursor === null) return;
    const due = [...this.confirming].filter(([, entry]) => entry.blockNumber <= cursor.number);
    // All read before any is settled: a failed read fails the round as a whole (tried again next tick), and no read is
    // left without a handler (an unhandled rejection would end the process).
    const hashes = await this.blockHashes(due.map(([, entry]) => entry.blockNumber));
    let reorged = false;
    for (const [key, entry] of due) {
      const hash = hashes.get(entry.blockNumber) ?? null;
      this.confirming.delete(key);
      if (hash === entry.blockHash) {
        this.options.store.transition(entry.call.callId, ['submitted'], 'done', { nowMs: this.options.now() });
        continue;
      }
      reorged = true;
      this.options.logger.warn({ callId: key, blockNumber: entry.blockNumber.toString(), blockHash: entry.blockHash }, 'a reorg removed the block of a result transaction; sending the result again');
    }
    if (reorged) this.options.submitter.resyncNonce();
  }

  /**
   * Keeper duty: releases assignments past their deadline (the contract checks the time): other operators', and our
   * own calls that were not started in time (queued behind others), which then go to another operator or come back
   * with a new deadline.
   */
  private async keep(): Promise<void> {
    const nowSeconds = BigInt(Math.floor(this.options.now() / 1000));
    const { store } = this.options;
    for (const assignment of store.assignments()) {
      if (assignment.done || assignment.released || assignment.deadline > nowSeconds) continue;
      const call = store.call(assignment.callId);
      if (call === null || call.state === 'done') continue;
      if (assignment.operator === this.me && (call.state !== 'seen' || this.busy.has(call.callId.toString()))) continue;
      const key = `${assignment.callId}:${assignment.deadline}`;
      if ((this.keeperTried.get(key) ?? 0) > this.options.now()) continue;
      this.keeperTried.set(key, this.options.now() + this.options.retryDelayMs * 2);
      const outcome = await this.options.submitter
        .write({ address: this.options.serviceManager, abi: SERVICE_MANAGER_ABI, functionName: 'releaseTimedOut', args: [this.options.serviceId, assignment.callId] })
        .catch((error: unknown) => {
          this.options.logger.warn({ err: error, callId: assignment.callId.toString() }, 'releasing a timed-out assignment failed');
          return null;
        });
      if (outcome?.kind === 'sent') {
        this.stats.released++;
        this.options.logger.info({ callId: assignment.callId.toString(), from: assignment.operator, txHash: outcome.txHash }, 'released a timed-out assignment (keeper)');
      }
    }
  }
}
