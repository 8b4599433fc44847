/**
 * The durable async invocation queue on JetStream.
 *
 * - Enqueue: a work-queue stream (one subject per tenant); the JetStream message id is the invocation id, so a retried
 *   enqueue inside the stream's duplicate window is stored once. `enqueue` resolves only after the stream's ack (the
 *   message is on a quorum of replicas): that is when a gateway may answer 202.
 * - Work: one durable pull consumer shared by every worker, explicit ack. A worker runs at most `maxInFlight` handlers,
 *   tells the server a run is still alive (`working()`) every ackWait/3 so a long run is not redelivered, and acks when
 *   the outcome is recorded. A worker that dies mid-run stops sending those: the server redelivers after ackWait.
 * - Outcomes: a KV bucket written with create(), so the first writer wins. A redelivered duplicate's outcome is
 *   dropped (and logged), never overwrites; a delivery whose invocation already has an outcome is acked without a run.
 * - Max deliveries: the consumer allows one delivery more than `maxDeliveries`. That last delivery is never run: it
 *   records `failed` with the reason and is acked, so a poison message neither runs forever nor sits in the work queue
 *   (an unacked message past the server's own limit would stay in a work-queue stream with nobody told).
 */
import { AckPolicy, DiscardPolicy, RetentionPolicy, StorageType, type Consumer, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultReplicas, clusterJetStream, clusterJetStreamManager } from './connection.js';

const MS = 1_000_000; // JetStream durations are in nanoseconds

export interface QueueNames {
  stream: string;
  /** Subjects are `<subjectPrefix>.<tenant>`. */
  subjectPrefix: string;
  consumer: string;
  outcomesBucket: string;
}

export const DEFAULT_QUEUE_NAMES: QueueNames = {
  stream: 'KINDLING_INVOCATIONS',
  subjectPrefix: 'kindling.invocations',
  consumer: 'kindling-workers',
  outcomesBucket: 'KINDLING_OUTCOMES',
};

export interface AsyncQueueOptions {
  names?: Partial<QueueNames>;
  /** Replicas of the stream and the outcomes bucket; 'auto' is 3 when the cluster has >= 3 servers, else 1. */
  replicas?: number | 'auto';
  /** Time within which an enqueue with the same invocation id is stored once. Default 2 min. */
  duplicateWindowMs?: number;
  /** Time a delivery may go without an ack or a progress signal before it is redelivered. Default 30 s. */
  ackWaitMs?: number;
  /** Deliveries (runs) allowed per invocation before it is recorded failed. Default 3. */
  maxDeliveries?: number;
  /** Bounds of the stream; enqueue fails (the gateway answers 503) when it is full. */
  maxMessages?: number;
  maxBytes?: number;
  /** One queued message (the invocation's reference, not its payload). Default 64 KiB. */
  maxMessageBytes?: number;
  /** Unacked deliveries across all workers. Default 10,000. */
  maxAckPending?: number;
  /** Outcomes are kept this long. Default 7 days. */
  outcomeTtlMs?: number;
  outcomesMaxBytes?: number;
  /** Time one enqueue keeps retrying (same message id) while the stream has no leader. Default 15 s. */
  enqueueRetryMs?: number;
  logger?: QueueLogger;
}

export interface QueueLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export const ASYNC_QUEUE_DEFAULTS = {
  duplicateWindowMs: 120_000,
  ackWaitMs: 30_000,
  maxDeliveries: 3,
  maxMessages: 1_000_000,
  maxBytes: 1024 * 1024 * 1024,
  maxMessageBytes: 64 * 1024,
  maxAckPending: 10_000,
  outcomeTtlMs: 7 * 24 * 3600 * 1000,
  outcomesMaxBytes: 1024 * 1024 * 1024,
  enqueueRetryMs: 15_000,
} as const;

/** What a gateway queues: the invocation's id, its tenant and a small JSON reference (function, version, input). */
export interface QueuedInvocation {
  id: string;
  tenant: string;
  data: unknown;
  enqueuedAt: string;
}

export interface EnqueueResult {
  seq: number;
  /** The stream already held this invocation id (a retried enqueue): nothing new was stored. */
  duplicate: boolean;
}

/** What a handler returns: user code failing is a `failed` outcome, not a thrown error. */
export interface HandlerOutcome {
  status: 'succeeded' | 'failed';
  reason?: string;
  result?: unknown;
}

export interface RecordedOutcome extends HandlerOutcome {
  id: string;
  tenant: string;
  node: string;
  deliveries: number;
  finishedAt: string;
}

export interface RunContext {
  deliveries: number;
  /** Aborted when the worker is destroyed. */
  signal: AbortSignal;
}

/**
 * Runs one invocation. Throwing means the platform could not run it (not that user code failed): the delivery is
 * retried after `retryDelayMs`, and recorded failed with the error once maxDeliveries runs have thrown.
 */
export type InvocationHandler = (job: QueuedInvocation, context: RunContext) => Promise<HandlerOutcome>;

export interface WorkerOptions {
  /** Recorded with each outcome (the worker's node id). */
  node: string;
  maxInFlight?: number;
  /** Time one pull waits for messages before asking again. Default 2 s; at least 1 s (the client's minimum). */
  fetchExpiresMs?: number;
  /** Delay before a delivery whose handler threw is offered again. Default 1 s. */
  retryDelayMs?: number;
  /** How often a running delivery says it is alive; default ackWait/3. 0 turns it off (tests of redelivery). */
  progressIntervalMs?: number;
}

export interface WorkerStats {
  inFlight: number;
  runs: number;
  acked: number;
  duplicatesDropped: number;
  failedPastMaxDeliveries: number;
}

export interface QueueWorker {
  stats(): WorkerStats;
  /** Stops pulling and waits for the runs in flight to finish and be acked. Idempotent. */
  close(): Promise<void>;
  /**
   * Stops pulling and aborts the runs in flight (their signal); a run that ends on the abort hands its delivery back
   * at once (nak). Resolves without waiting for runs that ignore the signal: their deliveries come back after ackWait.
   */
  destroy(): Promise<void>;
}

export interface QueueStatus {
  stream: string;
  replicas: number;
  messages: number;
  /** Not yet delivered to any worker. */
  pending: number;
  /** Delivered, not yet acked (running, or lost with a dead worker until ackWait). */
  ackPending: number;
  redelivered: number;
}

const TENANT_TOKEN = /^[A-Za-z0-9_-]{1,128}$/;
/** KV keys allow more, but ids are ours: keep them to what needs no encoding. */
const ID_TOKEN = /^[A-Za-z0-9_=-]{1,128}$/;

function encode(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

function decode<T>(bytes: Uint8Array): T {
  return JSON.parse(new TextDecoder().decode(bytes)) as T;
}

export class AsyncQueue {
  readonly names: QueueNames;
  private readonly options: AsyncQueueOptions;
  private readonly js: JetStreamClient;
  private readonly jsm: JetStreamManager;
  private outcomes: KV | null = null;
  private replicaCount = 1;

  private constructor(nc: NatsConnection, jsm: JetStreamManager, options: AsyncQueueOptions) {
    this.names = { ...DEFAULT_QUEUE_NAMES, ...options.names };
    this.options = options;
    this.js = clusterJetStream(nc);
    this.jsm = jsm;
  }

  /** Creates the stream, the consumer and the outcomes bucket when missing (idempotent), and returns the queue. */
  static async open(nc: NatsConnection, options: AsyncQueueOptions = {}): Promise<AsyncQueue> {
    const queue = new AsyncQueue(nc, await clusterJetStreamManager(nc), options);
    await queue.ensure(nc);
    return queue;
  }

  private get ackWaitMs(): number {
    return this.options.ackWaitMs ?? ASYNC_QUEUE_DEFAULTS.ackWaitMs;
  }

  private get maxDeliveries(): number {
    return this.options.maxDeliveries ?? ASYNC_QUEUE_DEFAULTS.maxDeliveries;
  }

  private async ensure(nc: NatsConnection): Promise<void> {
    const requested = this.options.replicas ?? 'auto';
    // Every server of a cluster gossips its client URL; a lone server has none.
    this.replicaCount = requested === 'auto' ? defaultReplicas(nc) : requested;
    const { stream, subjectPrefix, consumer, outcomesBucket } = this.names;
    const existing = await this.jsm.streams.info(stream).catch(() => null);
    if (existing === null) {
      await this.jsm.streams.add({
        name: stream,
        subjects: [`${subjectPrefix}.*`],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
        num_replicas: this.replicaCount,
        duplicate_window: (this.options.duplicateWindowMs ?? ASYNC_QUEUE_DEFAULTS.duplicateWindowMs) * MS,
        max_msgs: this.options.maxMessages ?? ASYNC_QUEUE_DEFAULTS.maxMessages,
        max_bytes: this.options.maxBytes ?? ASYNC_QUEUE_DEFAULTS.maxBytes,
        max_msg_size: this.options.maxMessageBytes ?? ASYNC_QUEUE_DEFAULTS.maxMessageBytes,
        discard: DiscardPolicy.New,
      });
    } else {
      this.replicaCount = existing.config.num_replicas;
    }
    const consumerExists = await this.jsm.consumers.info(stream, consumer).catch(() => null);
    if (consumerExists === null) {
      await this.jsm.consumers.add(stream, {
        durable_name: consumer,
        ack_policy: AckPolicy.Explicit,
        ack_wait: this.ackWaitMs * MS,
        // One delivery more than allowed runs: the extra one records `failed` (see the module comment).
        max_deliver: this.maxDeliveries + 1,
        max_ack_pending: this.options.maxAckPending ?? ASYNC_QUEUE_DEFAULTS.maxAckPending,
        filter_subject: `${subjectPrefix}.*`,
      });
    }
    this.outcomes = await new Kvm(this.js).create(outcomesBucket, {
      replicas: this.replicaCount,
      history: 1,
      ttl: this.options.outcomeTtlMs ?? ASYNC_QUEUE_DEFAULTS.outcomeTtlMs,
      max_bytes: this.options.outcomesMaxBytes ?? ASYNC_QUEUE_DEFAULTS.outcomesMaxBytes,
      maxValueSize: this.options.maxMessageBytes ?? ASYNC_QUEUE_DEFAULTS.maxMessageBytes,
    });
  }

  get replicas(): number {
    return this.replicaCount;
  }

  /**
   * Stores one invocation; resolves after the stream's ack. While the stream has no leader (an election after a node
   * died) the publish is retried with the same message id for up to enqueueRetryMs, so a publish whose ack was lost is
   * not stored twice.
   */
  async enqueue(id: string, tenant: string, data: unknown): Promise<EnqueueResult> {
    if (!ID_TOKEN.test(id)) throw new Error(`invocation id "${id}" must be 1-128 of A-Z a-z 0-9 _ = -`);
    if (!TENANT_TOKEN.test(tenant)) throw new Error(`tenant "${tenant}" must be 1-128 of A-Z a-z 0-9 _ - (it is a subject token)`);
    const body = encode({ id, tenant, data, enqueuedAt: new Date().toISOString() } satisfies QueuedInvocation);
    const deadline = performance.now() + (this.options.enqueueRetryMs ?? ASYNC_QUEUE_DEFAULTS.enqueueRetryMs);
    for (let attempt = 0; ; attempt++) {
      try {
        const ack = await this.js.publish(`${this.names.subjectPrefix}.${tenant}`, body, { msgID: id, timeout: 5_000 });
        return { seq: ack.seq, duplicate: ack.duplicate };
      } catch (error) {
        // A full stream or a too large message will not get better by retrying.
        // Cut: the reason goes into the record, which has a size limit of its own.
        const message = (error instanceof Error ? error.message : String(error)).slice(0, 2_000);
        if (/maximum (messages|bytes)|message size exceeds/i.test(message) || performance.now() > deadline) throw error;
        await sleep(Math.min(1_000, 50 * 2 ** attempt));
      }
    }
  }

  /** The recorded outcome of an invocation, or null. */
  async outcome(id: string): Promise<RecordedOutcome | null> {
    const entry = await this.kv().get(id);
    if (entry === null || entry.operation !== 'PUT') return null;
    return decode<RecordedOutcome>(entry.value);
  }

  /**
   * Records an outcome unless one exists; returns whether this call was the first writer. An outcome larger than
   * maxMessageBytes is recorded as `failed` saying so (large results belong in an object store, not in the record).
   */
  async record(outcome: RecordedOutcome): Promise<boolean> {
    const limit = this.options.maxMessageBytes ?? ASYNC_QUEUE_DEFAULTS.maxMessageBytes;
    let bytes = encode(outcome);
    if (bytes.length > limit) {
      const { result: _result, reason: _reason, ...rest } = outcome;
      bytes = encode({ ...rest, status: 'failed', reason: `the outcome is ${bytes.length} bytes, over the record's limit of ${limit} bytes (maxMessageBytes); return a smaller result` } satisfies RecordedOutcome);
    }
    try {
      await this.kv().create(outcome.id, bytes);
      return true;
    } catch (error) {
      if ((await this.outcome(outcome.id)) !== null) return false;
      throw error;
    }
  }

  /** The queue's counts without creating anything: null when its stream or consumer does not exist. */
  static async inspect(nc: NatsConnection, names: Partial<QueueNames> = {}): Promise<QueueStatus | null> {
    const { stream, consumer } = { ...DEFAULT_QUEUE_NAMES, ...names };
    const jsm = await clusterJetStreamManager(nc);
    const info = await jsm.streams.info(stream).catch(() => null);
    const consumerInfo = info === null ? null : await jsm.consumers.info(stream, consumer).catch(() => null);
    if (info === null || consumerInfo === null) return null;
    return { stream, replicas: info.config.num_replicas, messages: info.state.messages, pending: consumerInfo.num_pending, ackPending: consumerInfo.num_ack_pending, redelivered: consumerInfo.num_redelivered };
  }

  async status(): Promise<QueueStatus> {
    const [stream, consumer] = await Promise.all([this.jsm.streams.info(this.names.stream), this.jsm.consumers.info(this.names.stream, this.names.consumer)]);
    return {
      stream: this.names.stream,
      replicas: stream.config.num_replicas,
      messages: stream.state.messages,
      pending: consumer.num_pending,
      ackPending: consumer.num_ack_pending,
      redelivered: consumer.num_redelivered,
    };
  }

  private kv(): KV {
    if (this.outcomes === null) throw new Error('the queue is not open');
    return this.outcomes;
  }

  /** Starts a worker loop on this connection. */
  async work(handler: InvocationHandler, options: WorkerOptions): Promise<QueueWorker> {
    const consumer = await this.js.consumers.get(this.names.stream, this.names.consumer);
    return new Worker(this, consumer, handler, options, this.ackWaitMs, this.maxDeliveries, this.options.logger);
  }
}

class Worker implements QueueWorker {
  private readonly counts: WorkerStats = { inFlight: 0, runs: 0, acked: 0, duplicatesDropped: 0, failedPastMaxDeliveries: 0 };
  private closing = false;
  private readonly abort = new AbortController();
  private slotFreed: (() => void) | null = null;
  private batch: { stop(): void } | null = null;
  private readonly loop: Promise<void>;
  private readonly running = new Set<Promise<void>>();
  private readonly maxInFlight: number;
  private readonly progressMs: number;
  private readonly fetchExpiresMs: number;
  private readonly retryForMs: number;

  constructor(
    private readonly queue: AsyncQueue,
    private readonly consumer: Consumer,
    private readonly handler: InvocationHandler,
    private readonly options: WorkerOptions,
    ackWaitMs: number,
    private readonly maxDeliveries: number,
    private readonly logger: QueueLogger | undefined,
  ) {
    this.maxInFlight = options.maxInFlight ?? 16;
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) throw new Error(`maxInFlight must be a whole number >= 1, got ${this.maxInFlight}`);
    const expires = options.fetchExpiresMs ?? 2_000;
    if (!Number.isInteger(expires) || expires < 1_000) throw new Error(`fetchExpiresMs must be a whole number >= 1000, got ${expires}`);
    this.fetchExpiresMs = expires;
    this.retryForMs = Math.floor(ackWaitMs / 2);
    this.progressMs = options.progressIntervalMs ?? Math.max(100, Math.floor(ackWaitMs / 3));
    this.loop = this.pull();
  }

  stats(): WorkerStats {
    return { ...this.counts };
  }

  async close(): Promise<void> {
    this.closing = true;
    this.batch?.stop();
    this.slotFreed?.();
    await this.loop;
    await Promise.all([...this.running]);
  }

  async destroy(): Promise<void> {
    this.abort.abort(new Error('the worker was destroyed'));
    this.closing = true;
    this.batch?.stop();
    this.slotFreed?.();
    await this.loop;
  }

  private async pull(): Promise<void> {
    let failures = 0;
    while (!this.closing) {
      const free = this.maxInFlight - this.counts.inFlight;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.slotFreed = resolve));
        this.slotFreed = null;
        continue;
      }
      try {
        const batch = await this.consumer.fetch({ max_messages: free, expires: this.fetchExpiresMs });
        this.batch = batch;
        for await (const msg of batch) {
          if (this.closing) {
            // Pulled just as the worker began to close: hand it back at once instead of running it.
            msg.nak();
            continue;
          }
          const run = this.handle(msg);
          this.running.add(run);
          void run.finally(() => this.running.delete(run));
        }
        failures = 0;
      } catch (error) {
        // No consumer leader (an election), a lost connection: keep asking, with a growing pause.
        if (this.closing) break;
        failures++;
        this.logger?.warn({ err: error, node: this.options.node }, 'queue worker: pull failed; retrying');
        await sleep(Math.min(2_000, 50 * 2 ** failures));
      } finally {
        this.batch = null;
      }
    }
  }

  private async handle(msg: JsMsg): Promise<void> {
    this.counts.inFlight++;
    const deliveries = msg.info.deliveryCount;
    let job: QueuedInvocation;
    try {
      job = msg.json<QueuedInvocation>();
      if (typeof job.id !== 'string' || !ID_TOKEN.test(job.id) || typeof job.tenant !== 'string') throw new Error('not an invocation');
    } catch {
      // Nothing of ours publishes this: drop it for good rather than redeliver it. Acked, not terminated: a work-queue
      // stream removes a message only when it is acked and would keep a terminated one forever.
      this.logger?.warn({ seq: msg.seq, node: this.options.node }, 'queue worker: a message that is not an invocation; dropped');
      await this.ack(msg).catch(() => undefined);
      this.release();
      return;
    }
    const base = { id: job.id, tenant: job.tenant, node: this.options.node, deliveries };
    // Keeps the delivery alive from the first read of the outcomes to the ack, retries of NATS calls included.
    const progress = this.progressMs > 0 ? setInterval(() => msg.working(), this.progressMs) : null;
    try {
      if ((await this.retrying(() => this.queue.outcome(job.id))) !== null) {
        // Recorded by an earlier delivery whose worker died before its ack: do not run it again.
        this.counts.duplicatesDropped++;
        this.logger?.info(base, 'queue worker: delivery of an invocation that already has an outcome; acked without a run');
        await this.ack(msg);
        return;
      }
      if (deliveries > this.maxDeliveries) {
        this.counts.failedPastMaxDeliveries++;
        const reason = `no outcome after ${this.maxDeliveries} deliveries (each worker that took it stopped answering within the ack wait)`;
        await this.recordOnce({ ...base, status: 'failed', reason, finishedAt: new Date().toISOString() });
        await this.ack(msg);
        return;
      }
      let outcome: HandlerOutcome;
      try {
        this.counts.runs++;
        outcome = await this.handler(job, { deliveries, signal: this.abort.signal });
      } catch (error) {
        if (this.abort.signal.aborted) {
          // Not the invocation's fault: another worker may take it right away (the delivery still counts towards maxDeliveries).
          msg.nak();
          return;
        }
        // Cut: the reason goes into the record, which has a size limit of its own.
        const message = (error instanceof Error ? error.message : String(error)).slice(0, 2_000);
        if (deliveries >= this.maxDeliveries) {
          outcome = { status: 'failed', reason: `could not run after ${deliveries} deliveries; last error: ${message}` };
        } else {
          this.logger?.warn({ ...base, err: error }, 'queue worker: the handler could not run the invocation; it will be retried');
          msg.nak(this.options.retryDelayMs ?? 1_000);
          return;
        }
      }
      await this.recordOnce({ ...base, ...outcome, finishedAt: new Date().toISOString() });
      await this.ack(msg);
    } catch (error) {
      // Recording or acking failed (NATS unreachable): the delivery is redelivered after ackWait and the record, if it
      // was made, wins over the retry's.
      this.logger?.warn({ ...base, err: error }, 'queue worker: could not record or ack; the invocation will be redelivered');
    } finally {
      if (progress !== null) clearInterval(progress);
      this.release();
    }
  }

  /**
   * Retries a NATS call that fails while a stream elects a leader (a node died): for up to ackWait/2, so that a run
   * that is done is recorded and acked instead of being redelivered and run again.
   */
  private async retrying<T>(call: () => Promise<T>): Promise<T> {
    const deadline = performance.now() + this.retryForMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await call();
      } catch (error) {
        if (this.closing && this.abort.signal.aborted) throw error;
        if (performance.now() > deadline) throw error;
        await sleep(Math.min(1_000, 25 * 2 ** attempt));
      }
    }
  }

  private async recordOnce(outcome: RecordedOutcome): Promise<void> {
    if (await this.retrying(() => this.queue.record(outcome))) return;
    this.counts.duplicatesDropped++;
    this.logger?.warn({ id: outcome.id, node: outcome.node, deliveries: outcome.deliveries }, 'queue worker: outcome dropped: the invocation already has one (a redelivered duplicate)');
  }

  private async ack(msg: JsMsg): Promise<void> {
    // ackAck waits for the server to confirm: an ack lost on the way would mean a redelivery nobody expects.
    await this.retrying(async () => {
      if (!(await msg.ackAck({ timeout: 5_000 }))) throw new Error(`the server did not confirm the ack of message ${msg.seq}`);
    });
    this.counts.acked++;
  }

  private release(): void {
    this.counts.inFlight--;
    this.slotFreed?.();
  }
}

