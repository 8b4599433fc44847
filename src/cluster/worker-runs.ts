/**
 * The worker side of cluster runs: answers `kindling.workers.<nodeId>.invoke` by running the version the gateway sent
 * on this server's executors and warm pools, and `...cancel` by aborting a run. See run-protocol.ts for the messages.
 */
import { headers, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { parseTraceparent } from '../core/tracing.js';
import type { InvocationResult, InvokeOptions } from '../orchestrator/function-service.js';
import type { IdleUsageEvent, InvocationEvent } from '../orchestrator/handler-pools.js';
import type { FunctionVersion } from '../store/store.js';
import {
  DELETED_SUBJECT,
  IDLE_USAGE_SUBJECT,
  INSTANCE_HEADER,
  KIND_HEADER,
  RUN_SUBJECT_PREFIX,
  cancelSubject,
  chunks,
  pingSubject,
  decodeFrame,
  encodeFrame,
  invokeSubject,
  runFactsOf,
  toWireError,
  type RunAnswer,
  type RunMessageKind,
  type RunRequest,
} from './run-protocol.js';

/** What runs a version here: the function service's invokeVersion without forwarding. */
export type RunVersion = (version: FunctionVersion, body: Buffer, options: InvokeOptions) => Promise<InvocationResult>;

export interface WorkerRunsOptions {
  nodeId: string;
  /** What this node answers a ping on its id with (another process starting with the same id refuses to). */
  identity: { instance: string; startedAt: string };
  run: RunVersion;
  /** A gateway deleted a function: its warm sandboxes here go. */
  onDeleted?: (tenant: string, name: string) => void;
  /** How often a running invocation tells its gateway it is alive. Default 1000 ms. */
  aliveIntervalMs?: number;
  onError?: (error: unknown, context: Record<string, unknown>) => void;
}

export const WORKER_RUNS_DEFAULTS = { aliveIntervalMs: 1000 } as const;

export class WorkerRuns {
  private readonly running = new Map<string, AbortController>();
  private readonly subscriptions: Subscription[];
  /** The subscriptions by which gateways reach this node as a place to run: dropped when another process takes the id. */
  private readonly placeable: Subscription[];
  private accepting = true;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: WorkerRunsOptions,
  ) {
    // A callback that throws would end the connection's reader (nats.js does not catch it): each one catches.
    const guarded = (handle: (msg: Msg) => void) => (error: Error | null, msg: Msg) => {
      try {
        if (error) this.report(error, {});
        else handle(msg);
      } catch (failure) {
        this.report(failure, { subject: msg.subject });
      }
    };
    this.placeable = [
      // No queue group: a connection of this process that died silently may still be subscribed at the server, which
      // would hand it every other call. Each request names the instance it is for (INSTANCE_HEADER): should two
      // processes share one id after all (both started in the same instant, before either heartbeat), each call is
      // run by the one the registry holds, never both.
      nc.subscribe(invokeSubject(options.nodeId), { callback: guarded((msg) => this.onInvoke(msg)) }),
      nc.subscribe(pingSubject(options.nodeId), { callback: guarded((msg) => msg.respond(JSON.stringify({ nodeId: options.nodeId, ...options.identity }))) }),
    ];
    this.subscriptions = [
      ...this.placeable,
      nc.subscribe(cancelSubject(options.nodeId), {
        callback: guarded((msg) => this.running.get(msg.string())?.abort(new KindlingError('CLIENT_DISCONNECTED', 'the gateway cancelled the invocation (its client went away, or it gave up on the run)'))),
      }),
      nc.subscribe(DELETED_SUBJECT, {
        callback: guarded((msg) => {
          const { tenant, name } = JSON.parse(msg.string()) as { tenant?: unknown; name?: unknown };
          if (typeof tenant === 'string' && typeof name === 'string') options.onDeleted?.(tenant, name);
        }),
      }),
    ];
  }

  /** Runs in flight here for gateways (the heartbeat's `inFlight`). */
  get inFlight(): number {
    return this.running.size;
  }

  /** Resolves once no run is in flight, or after `deadlineMs` (false then). */
  async idle(deadlineMs: number): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    while (this.running.size > 0) {
      if (Date.now() >= until) return false;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return true;
  }

  /** Stops taking runs (a drain): new requests are answered SHUTTING_DOWN; runs in flight go on. */
  stopAccepting(): void {
    this.accepting = false;
  }

  /**
   * Sends the idle usage of a sandbox kept for a gateway's function to the gateways; true once one of them recorded it
   * (it answers), false when none did (none listens, NATS is down, no answer within 5 s): the caller records it here.
   */
  async idleUsage(event: IdleUsageEvent): Promise<boolean> {
    try {
      await this.nc.request(IDLE_USAGE_SUBJECT, JSON.stringify(event), { timeout: 5_000 });
      return true;
    } catch {
      return false;
    }
  }

  /** Another process took this node's id: gateways' calls reach it no more (runs in flight go on and answer). */
  leave(): void {
    this.accepting = false;
    for (const subscription of this.placeable) subscription.unsubscribe();
  }

  /** Aborts every run in flight with `reason` (fencing: their gateways have given up on them). */
  abortAll(reason: KindlingError): number {
    for (const controller of this.running.values()) controller.abort(reason);
    return this.running.size;
  }

  /** Aborts every run in flight (their answers say so) and stops listening for new ones. */
  close(): void {
    this.accepting = false;
    for (const subscription of this.subscriptions) subscription.unsubscribe();
    // Not SHUTTING_DOWN, which tells a gateway that nothing ran (it places the call elsewhere): these had started.
    for (const controller of this.running.values()) controller.abort(new KindlingError('WORKER_LOST', `worker ${this.options.nodeId} stopped during the run (its shutdown deadline passed); the invocation may have run`));
  }

  private report(error: unknown, context: Record<string, unknown>): void {
    this.options.onError?.(error, context);
  }

  private onInvoke(msg: Msg): void {
    const reply = msg.reply;
    // Only a reply to a run subject is answered: anything else on this subject is not a gateway's request.
    if (reply === undefined || !reply.startsWith(RUN_SUBJECT_PREFIX)) return;
    const instance = msg.headers?.get(INSTANCE_HEADER);
    if (instance && instance !== this.options.identity.instance) return;
    let request: RunRequest;
    let payload: Buffer;
    try {
      const frame = decodeFrame<RunRequest>(msg.data);
      request = frame.meta;
      payload = frame.rest;
      if (typeof request.runId !== 'string' || typeof request.version?.spec !== 'object') throw new Error('not a run request');
    } catch (error) {
      this.report(error, { subject: msg.subject });
      this.finish(reply, { ok: false, error: { code: 'VALIDATION_FAILED', message: `the worker could not read the run request: ${(error as Error).message}` } });
      return;
    }
    if (!this.accepting) {
      // `refused`: nothing ran, so the gateway places the call on another worker.
      this.finish(reply, { ok: false, error: { code: 'SHUTTING_DOWN', message: `worker ${this.options.nodeId} is stopping`, retryAfterSeconds: 1, details: { refused: true } } });
      return;
    }
    void this.execute(request, payload, reply);
  }

  private async execute(request: RunRequest, payload: Buffer, reply: string): Promise<void> {
    const controller = new AbortController();
    this.running.set(request.runId, controller);
    const alive = setInterval(() => this.send(reply, 'alive'), this.options.aliveIntervalMs ?? WORKER_RUNS_DEFAULTS.aliveIntervalMs);
    try {
      const parsed = request.traceparent ? parseTraceparent(request.traceparent) : null;
      let metered: InvocationEvent | undefined;
      const result = await this.options.run(request.version, payload, {
        onMetered: (facts) => (metered = facts),
        signal: controller.signal,
        scope: { name: request.version.tenant, caps: request.caps ?? {} },
        ...(parsed && request.traceparent ? { trace: { traceId: parsed.traceId, traceparent: request.traceparent } } : {}),
        onStarted: (id, info) => this.send(reply, 'started', Buffer.from(JSON.stringify({ id, ...info }))),
        ...(request.output ? { onOutput: (stream: string, text: string) => this.send(reply, 'out', Buffer.from(text), { s: stream }) } : {}),
      });
      this.finish(reply, {
        ok: true,
        result: {
          ...runFactsOf(result),
          bodyBytes: result.body.length,
          stderrBytes: result.stderr.length,
          ...(metered ? { metered } : {}),
        },
      }, result.body, result.stderr);
    } catch (error) {
      this.finish(reply, { ok: false, error: toWireError(error) });
    } finally {
      clearInterval(alive);
      this.running.delete(request.runId);
    }
  }

  private send(subject: string, kind: RunMessageKind, data: Uint8Array = new Uint8Array(0), extra: Record<string, string> = {}): void {
    const h = headers();
    h.set(KIND_HEADER, kind);
    for (const [key, value] of Object.entries(extra)) h.set(key, value);
    try {
      this.nc.publish(subject, data, { headers: h });
    } catch (error) {
      // A closed connection: the gateway learns it from the missing `alive` messages.
      this.report(error, { subject, kind });
    }
  }

  /** The answer, in pieces first when it is larger than one message may be. */
  private finish(reply: string, answer: RunAnswer, ...parts: Buffer[]): void {
    const frame = encodeFrame(answer, ...parts);
    // Headers and the protocol line take a little of max_payload.
    const maxBytes = Math.max(1024, (this.nc.info?.max_payload ?? 1024 * 1024) - 4096);
    if (frame.length <= maxBytes) {
      this.send(reply, 'result', frame);
      return;
    }
    const pieces = chunks(frame, maxBytes);
    for (const piece of pieces) this.send(reply, 'chunk', piece);
    this.send(reply, 'result', new Uint8Array(0), { chunks: String(pieces.length) });
  }
}
