/**
 * Usage records across gateways: each gateway meters the calls it took (as a single server does) and publishes its
 * records to the JetStream stream `KINDLING_USAGE` (R3 on a 3-node cluster), in batches; every gateway follows the
 * stream from where it stopped and stores every record in its own usage store. So `GET /v1/usage` (and the console's
 * charts) at any gateway show the whole cluster's usage: a record's id is unique, so one seen twice (its own, read
 * back) is stored once.
 *
 * The position each gateway applied is kept beside the records, in one transaction, so a restart resumes there. The
 * stream keeps records for `maxAgeMs` (default 7 days) within `maxBytes`: a gateway down longer misses what aged out.
 */
import { DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, type JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { UsageRecord } from '../store/usage.js';
import { defaultReplicas, clusterJetStream, clusterJetStreamManager } from './connection.js';

const MS = 1_000_000; // JetStream durations are in nanoseconds
export const DEFAULT_USAGE_STREAM = 'KINDLING_USAGE';
export const SHARED_USAGE_DEFAULTS = { maxAgeMs: 7 * 24 * 3600_000, maxBytes: 1024 ** 3, flushMs: 50, maxBatchRecords: 500, maxBuffered: 100_000 } as const;

/** Where a gateway's copy of the records goes (its SQLite usage store). */
export interface UsageSink {
  applyShared(stream: string, records: readonly UsageRecord[], seq: number): void;
  sharedPosition(stream: string): number;
}

export interface SharedUsageOptions {
  nodeId: string;
  stream?: string;
  replicas?: number;
  maxAgeMs?: number;
  maxBytes?: number;
  /** Records wait at most this long before they are published (with the others of that time). Default 50 ms. */
  flushMs?: number;
  /** Records held while NATS does not take them; beyond, the oldest are dropped from the stream (kept here). */
  maxBuffered?: number;
  onError?: (error: unknown, context: { phase: 'publish' | 'apply' | 'follow'; records?: number }) => void;
}

export class SharedUsage {
  private buffered: UsageRecord[] = [];
  /** The first records of `buffered` being published now: a trim never drops them (they are removed once acked). */
  private sending = 0;
  private timer: NodeJS.Timeout | null = null;
  private publishing: Promise<void> = Promise.resolve();
  private stopFollowing: () => void = () => {};
  private closed = false;
  /** Records dropped from the stream because NATS did not take them in time (still in this gateway's own store). */
  droppedRecords = 0;

  private constructor(
    private readonly js: JetStreamClient,
    private readonly stream: string,
    private readonly sink: UsageSink,
    private readonly options: SharedUsageOptions,
  ) {}

  /** Creates the stream if needed, then follows it into `sink` from the position the sink applied last. */
  static async join(nc: NatsConnection, sink: UsageSink, options: SharedUsageOptions): Promise<SharedUsage> {
    const stream = options.stream ?? DEFAULT_USAGE_STREAM;
    const jsm = await clusterJetStreamManager(nc);
    const existing = await jsm.streams.info(stream).catch(() => null);
    if (existing === null) {
      await jsm.streams
        .add({
          name: stream,
          subjects: [`kindling.usage.records.*`],
          retention: RetentionPolicy.Limits,
          storage: StorageType.File,
          num_replicas: options.replicas ?? defaultReplicas(nc),
          max_age: (options.maxAgeMs ?? SHARED_USAGE_DEFAULTS.maxAgeMs) * MS,
          max_bytes: options.maxBytes ?? SHARED_USAGE_DEFAULTS.maxBytes,
          // Full: the oldest records go (every gateway has applied them long since), never a gateway's new ones.
          discard: DiscardPolicy.Old,
        })
        .catch(async (error: unknown) => {
          // Another gateway created it at the same moment.
          if ((await jsm.streams.info(stream).catch(() => null)) === null) throw error;
        });
    }
    const usage = new SharedUsage(clusterJetStream(nc), stream, sink, options);
    await usage.follow((await jsm.streams.info(stream)).state.last_seq);
    return usage;
  }

  /** Publishes a record this gateway metered (batched; in order). */
  publish(record: UsageRecord): void {
    if (this.closed) return;
    this.buffered.push(record);
    const max = this.options.maxBuffered ?? SHARED_USAGE_DEFAULTS.maxBuffered;
    if (this.buffered.length > max) {
      // The oldest records not being published go.
      const over = Math.min(this.buffered.length - max, this.buffered.length - this.sending);
      this.buffered.splice(this.sending, over);
      this.droppedRecords += over;
    }
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), this.options.flushMs ?? SHARED_USAGE_DEFAULTS.flushMs);
      this.timer.unref();
    }
  }

  /** Resolves once the records buffered so far were published (or given up on). */
  flushed(): Promise<void> {
    this.flush();
    return this.publishing;
  }

  /** Publishes what is buffered, then stops following. */
  async close(): Promise<void> {
    await this.flushed();
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.stopFollowing();
  }

  private flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.buffered.length === 0) return;
    // One publish at a time, in order: a batch that failed is retried before the next.
    this.publishing = this.publishing.then(() => this.publishBuffered());
  }

  private async publishBuffered(): Promise<void> {
    const subject = `kindling.usage.records.${this.options.nodeId}`;
    const batchSize = SHARED_USAGE_DEFAULTS.maxBatchRecords;
    while (this.buffered.length > 0) {
      const batch = this.buffered.slice(0, batchSize);
      this.sending = batch.length;
      try {
        await this.js.publish(subject, JSON.stringify(batch));
      } catch (error) {
        this.sending = 0;
        this.options.onError?.(error, { phase: 'publish', records: batch.length });
        if (this.closed) return;
        // Kept (up to maxBuffered) and tried again by the next flush, a second from now.
        if (this.timer === null) {
          this.timer = setTimeout(() => this.flush(), 1_000);
          this.timer.unref();
        }
        return;
      }
      // Trims meanwhile left the records being published in place: they are still the first ones.
      this.buffered.splice(0, batch.length);
      this.sending = 0;
    }
  }

  /** Applies the stream from the sink's position; resolves once what the stream held at `lastAtStart` is applied. */
  private async follow(lastAtStart: number): Promise<void> {
    let position = this.sink.sharedPosition(this.stream);
    // A stream made again (its sequence restarted below the position): from its start.
    if (position > lastAtStart) position = 0;
    const consumer = await this.js.consumers.get(this.stream, position === 0 ? { deliver_policy: DeliverPolicy.All } : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: position + 1 });
    const messages = await consumer.consume();
    this.stopFollowing = () => void messages.close();
    let caughtUp: () => void = () => {};
    const ready = new Promise<void>((resolve) => (caughtUp = resolve));
    if (position >= lastAtStart) caughtUp();
    void (async () => {
      for await (const msg of messages) {
        try {
          this.sink.applyShared(this.stream, msg.json<UsageRecord[]>(), msg.seq);
        } catch (error) {
          this.options.onError?.(error, { phase: 'apply' });
        }
        if (msg.seq >= lastAtStart) caughtUp();
      }
    })().catch((error: unknown) => this.options.onError?.(error, { phase: 'follow' }));
    // A start does not wait for a long history forever: the rest is applied as it comes.
    await Promise.race([ready, new Promise((resolve) => setTimeout(resolve, 15_000).unref())]);
  }
}
