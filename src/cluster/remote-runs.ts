/**
 * The gateway side of cluster runs: places an invocation on a worker from the registry view (placement.ts), sends it,
 * and turns the worker's messages back into what a local run gives (started, live output, the result or its error).
 *
 * What goes to workers: calls of handler and command functions (a body in, a body out), bundles and dependency layers
 * included (a worker fetches them from the cluster's object store: shared-artifacts.ts); not those with Debian packages
 * or a custom image (their images live on the server that took the deploy), and not raw streams, whose stdin and stdout
 * pass through the gateway as they flow (remotable()). Those run on the gateway itself, as on a single server.
 */
import { headers as natsHeaders, nuid, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import { IMAGE_SHORT_NAMES } from '../images/recipes.js';
import type { ExecutorName } from '../core/types.js';
import { isHandlerStyle, type InvocationResult, type InvokeOptions, type RemoteRouter } from '../orchestrator/function-service.js';
import type { IdleUsageEvent, InvocationEvent } from '../orchestrator/handler-pools.js';
import type { FunctionVersion } from '../store/store.js';
import { placeInvocation, type PlacementCandidate } from './placement.js';
import type { WorkerEntry } from './registry.js';
import { DELETED_SUBJECT, IDLE_USAGE_SUBJECT, INSTANCE_HEADER, KIND_HEADER, RUN_SUBJECT_PREFIX, cancelSubject, decodeFrame, encodeFrame, fromWireError, invokeSubject, parseIdleUsage, runFactsOf, type RunAnswer, type RunRequest } from './run-protocol.js';

export interface RemoteRunsOptions {
  /** This node's id; with `runsHere` a placement on it runs locally. */
  nodeId: string;
  /** Whether this node is a worker too (role `all`): it may be placed on, and runs what no other worker can take. */
  runsHere: boolean;
  /** The workers heard from within the registry's TTL. */
  workers: () => readonly WorkerEntry[];
  /** Workers a cold function's warm pool forms on. Default 2. */
  spread?: number;
  /** A run whose worker has said nothing (no `alive`) for this long is failed with WORKER_LOST. Default 5000 ms. */
  silenceTimeoutMs?: number;
  /** A finished run's metering facts as the worker measured them: the gateway's usage records. */
  onMetered?: (facts: InvocationEvent) => void;
  /** Whether anyone follows live output now (the log bus): workers send it only then. Default: always. */
  wantsOutput?: () => boolean;
  /** How each call sent to workers ended (metrics). */
  onOutcome?: (outcome: 'answered' | 'worker_lost' | 'no_workers' | 'cancelled') => void;
  /** The idle usage workers send for the warm sandboxes they keep for this cluster's functions. */
  onIdleUsage?: (event: IdleUsageEvent) => void;
  /**
   * Whether this node's own NATS connection is up: a run that goes silent while it is down failed on this side
   * (CLUSTER_UNAVAILABLE), not its worker's, which is then not taken for lost. Default: always up.
   */
  connected?: () => boolean;
  /** Reconnects of this node's NATS connection so far: a run across one may have lost its worker's messages. */
  reconnects?: () => number;
}

export const REMOTE_RUNS_DEFAULTS = {
  silenceTimeoutMs: 5000,
  /** A version without its own timeoutMs: the longest a server allows (its default is shorter). */
  unsetTimeoutMs: 15 * 60_000,
  /** Past the function's timeout: time to start its sandbox and to queue for it. */
  deadlineMarginMs: 120_000,
  /** The largest answer a gateway takes in pieces: the body and logs of a call are each capped by outputBytes. */
  maxAnswerBytes: 256 * 1024 * 1024,
} as const;

/** The key of a version in the registry's `warm` lists. */
export const versionKey = (version: Pick<FunctionVersion, 'tenant' | 'name' | 'version'>): string => `${version.tenant}/${version.name}@${version.version}`;

/**
 * Whether a worker can run this version with what the gateway sends and the cluster's object store holds (its bundle
 * and layer): no image kept only by the server that took the deploy (one built for its packages, a tenant's custom
 * image), and not a raw stream
 * (its stdin and stdout pass through the gateway). Handler and command functions alike; a command function's image
 * must be a built-in one, which every server has.
 */
export function remotable(version: FunctionVersion, options: Pick<InvokeOptions, 'io'>): boolean {
  const spec = version.spec;
  if (options.io !== undefined || spec.aptImage !== undefined) return false;
  if (spec.image === undefined) return true;
  // A handler names no image; a command function's may be a tenant's custom image (a short name resolves to one).
  return !isHandlerStyle(spec) && isBuiltInImage(spec.image);
}

const isBuiltInImage = (image: string): boolean => {
  const short = /^kindling\/([a-z0-9][a-z0-9_.-]*)(?::latest)?$/.exec(image)?.[1];
  return short !== undefined && (IMAGE_SHORT_NAMES as readonly string[]).includes(short);
};

export class RemoteRuns implements RemoteRouter {
  /** Runs this gateway has sent to each worker and not seen end: added to the worker's last heartbeat, which lags. */
  private readonly sent = new Map<string, number>();
  /**
   * Workers given up on mid-run (WORKER_LOST), with the heartbeat they had then: not placed on again until a newer
   * heartbeat says they are back. Their registry entries outlive them (the TTL), and a worker cut off from NATS, or
   * stalled, still has interest in its subject for a while, so without this an invocation delivered again could go
   * back to the worker that lost it, time after time.
   */
  private readonly lost = new Map<string, string>();
  /**
   * One wildcard subscription for the replies of every run (`<prefix>.<runId>`), as nats.js muxes its requests: a
   * subscription per run would cost a SUB and an UNSUB each and wait for its interest to spread over a NATS cluster.
   */
  private readonly prefix = `${RUN_SUBJECT_PREFIX}${nuid.next()}`;
  private readonly waiting = new Map<string, { onMessage: (msg: Msg) => void; fail: (error: unknown) => void }>();
  private readonly subscription: Subscription;
  private idleSubscription: Subscription | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: RemoteRunsOptions,
  ) {
    this.subscription = nc.subscribe(`${this.prefix}.*`, {
      callback: (error, msg) => {
        if (error) return;
        const run = this.waiting.get(msg.subject.slice(this.prefix.length + 1));
        if (run === undefined) return;
        // A callback that throws would end the connection's reader (nats.js does not catch it): a message that cannot
        // be read fails its run only.
        try {
          run.onMessage(msg);
        } catch (failure) {
          run.fail(new KindlingError('EXECUTOR_FAILED', `the worker's answer could not be read: ${failure instanceof Error ? failure.message : String(failure)}`));
        }
      },
    });
  }

  /**
   * Starts taking the idle-usage records workers send (one gateway of the group records each). Called once this node
   * holds its id: a twin refused at start must not take, and lose, records meant for the other gateways.
   */
  listenForIdleUsage(): void {
    const onIdleUsage = this.options.onIdleUsage;
    if (onIdleUsage === undefined || this.idleSubscription !== null) return;
    this.idleSubscription = this.nc.subscribe(IDLE_USAGE_SUBJECT, {
      queue: 'kindling-gateways',
      callback: (error, msg) => {
        const event = error ? null : parseIdleUsage(msg.data);
        if (event === null) return;
        try {
          onIdleUsage(event);
          // Recorded: the worker does not keep it too.
          msg.respond();
        } catch {
          // A record that cannot be written is the meter's to report; it must not end the connection's reader.
        }
      },
    });
  }

  /** Stops listening for replies; runs still waiting fail now (their workers are told to stop). */
  close(): void {
    this.subscription.unsubscribe();
    this.idleSubscription?.unsubscribe();
    // `sent`: unlike a SHUTTING_DOWN refusal, the run may have happened (an async invocation counts it as an attempt).
    for (const run of [...this.waiting.values()]) run.fail(new KindlingError('SHUTTING_DOWN', 'the gateway stopped before the worker answered; the invocation may have run', { retryAfterSeconds: 1, details: { sent: true } }));
  }

  /** Tells every worker a function is gone, so its warm sandboxes there go too (workers hear of deploys with calls). */
  deleted(tenant: string, name: string): void {
    try {
      this.nc.publish(DELETED_SUBJECT, JSON.stringify({ tenant, name }));
    } catch {
      // NATS is down: the workers' sandboxes of it go at their idle TTL (minWarm ones with the worker's restart).
    }
  }

  runsHere(version: FunctionVersion): boolean {
    return this.options.runsHere || !remotable(version, {});
  }

  route(version: FunctionVersion, _executor: ExecutorName, body: Buffer, options: InvokeOptions, runHere: () => Promise<InvocationResult>, admit: () => Promise<() => void>): Promise<InvocationResult> | null {
    if (!remotable(version, options)) return null;
    const request: RunRequest = {
      runId: nuid.next(),
      version,
      caps: options.scope?.caps ?? {},
      ...(options.trace ? { traceparent: options.trace.traceparent } : {}),
      output: options.onOutput !== undefined && (this.options.wantsOutput?.() ?? true),
    };
    const frame = encodeFrame(request, body);
    // The request's headers and protocol line take a little of max_payload. A version whose code and body do not fit
    // in one message runs here: the gateway holds its files too.
    const maxBytes = (this.nc.info?.max_payload ?? 1024 * 1024) - 4096;
    if (frame.length > maxBytes) return null;
    return this.admitted(version, request, frame, options, runHere, admit);
  }

  /** Within a slot of the function's maxConcurrency (this gateway is the one place that counts its calls): placed, sent. */
  private async admitted(version: FunctionVersion, request: RunRequest, frame: Uint8Array, options: InvokeOptions, runHere: () => Promise<InvocationResult>, admit: () => Promise<() => void>): Promise<InvocationResult> {
    const release = await admit();
    try {
      // Without NATS now nothing is sent (nats.js would buffer it until a reconnect and deliver it late, maybe twice).
      if (this.options.connected?.() === false) {
        if (this.options.runsHere) return await runHere();
        throw new KindlingError('CLUSTER_UNAVAILABLE', 'this gateway has no NATS connection now (it is reconnecting); nothing was sent: retry shortly', { retryAfterSeconds: 1 });
      }
      // Placed once admitted: the registry as it is now, not as it was when the call began to wait.
      const nodeId = this.place(version, new Set());
      if (nodeId === null || nodeId === this.options.nodeId) {
        if (this.options.runsHere) return await runHere();
        this.options.onOutcome?.('no_workers');
        throw noWorkers('no worker with a free slot is registered in the cluster; start a worker (kindling serve --cluster ... --role worker) or retry shortly');
      }
      const result = await this.runOn(nodeId, version, request, frame, options, new Set([nodeId]), runHere).catch((error: unknown) => {
        const code = error instanceof KindlingError ? error.code : null;
        this.options.onOutcome?.(code === 'WORKER_LOST' ? 'worker_lost' : code === 'NO_WORKERS' ? 'no_workers' : code === 'CLIENT_DISCONNECTED' ? 'cancelled' : 'answered');
        throw error;
      });
      this.options.onOutcome?.('answered');
      return result;
    } finally {
      release();
    }
  }

  private place(version: FunctionVersion, exclude: ReadonlySet<string>): string | null {
    const workers = this.options.workers();
    if (this.lost.size > 0) {
      // Forgotten once it left the view or heartbeated again.
      for (const [nodeId, heartbeatAt] of this.lost) if (!workers.some((worker) => worker.nodeId === nodeId && worker.heartbeatAt === heartbeatAt)) this.lost.delete(nodeId);
    }
    const candidates: PlacementCandidate[] = workers
      .filter((worker) => !exclude.has(worker.nodeId) && !this.lost.has(worker.nodeId) && (worker.nodeId !== this.options.nodeId || this.options.runsHere))
      .map((worker) => ({ nodeId: worker.nodeId, capacity: worker.capacity, warm: worker.warm, inFlight: Math.max(worker.inFlight, this.sent.get(worker.nodeId) ?? 0) }));
    return placeInvocation(candidates, versionKey(version), { spread: this.options.spread ?? 2 });
  }

  private async runOn(nodeId: string, version: FunctionVersion, request: RunRequest, frame: Uint8Array, options: InvokeOptions, tried: Set<string>, runHere: () => Promise<InvocationResult>): Promise<InvocationResult> {
    this.sent.set(nodeId, (this.sent.get(nodeId) ?? 0) + 1);
    try {
      return await this.send(nodeId, version, request, frame, options);
    } catch (error) {
      // Nothing ran: nobody listened (the worker left since its last heartbeat) or it refused (it is draining). One
      // other worker is tried, or this node when it is a worker too.
      if (error instanceof NoResponders || (error instanceof KindlingError && error.code === 'SHUTTING_DOWN' && error.details?.refused === true)) {
        const next = this.place(version, tried);
        if (next !== null && next !== this.options.nodeId) return this.runOn(next, version, request, frame, options, tried.add(next), runHere);
        if (this.options.runsHere) return runHere();
        throw noWorkers(`worker ${nodeId} ${error instanceof NoResponders ? 'left the cluster' : 'is draining'} and no other worker has a free slot; retry shortly`);
      }
      throw error;
    } finally {
      const left = (this.sent.get(nodeId) ?? 1) - 1;
      if (left <= 0) this.sent.delete(nodeId);
      else this.sent.set(nodeId, left);
    }
  }

  private send(nodeId: string, version: FunctionVersion, request: RunRequest, frame: Uint8Array, options: InvokeOptions): Promise<InvocationResult> {
    const runId = request.runId;
    const subject = `${this.prefix}.${runId}`;
    const silenceMs = this.options.silenceTimeoutMs ?? REMOTE_RUNS_DEFAULTS.silenceTimeoutMs;
    // A worker that keeps saying `alive` but never answers (a bug, a sandbox kill that hangs) is given up on too.
    const deadlineMs = (version.spec.timeoutMs ?? REMOTE_RUNS_DEFAULTS.unsetTimeoutMs) + REMOTE_RUNS_DEFAULTS.deadlineMarginMs;
    return new Promise<InvocationResult>((resolve, reject) => {
      const pieces: Uint8Array[] = [];
      let pieceBytes = 0;
      let silence: NodeJS.Timeout | null = null;
      let settled = false;
      const cancel = (): void => {
        try {
          this.nc.publish(cancelSubject(nodeId), runId);
        } catch {
          // The connection is gone: a worker cut off from NATS aborts its runs itself (fencing).
        }
      };
      const end = (): void => {
        settled = true;
        this.waiting.delete(runId);
        if (silence) clearTimeout(silence);
        clearTimeout(deadline);
        options.signal?.removeEventListener('abort', onAbort);
      };
      const fail = (error: unknown): void => {
        if (settled) return;
        end();
        reject(error);
      };
      // Given up on: the worker stops the run (its sandbox goes) rather than finish it for nobody.
      const giveUp = (error: unknown): void => {
        if (settled) return;
        cancel();
        fail(error);
      };
      const lost = (why: string): KindlingError => new KindlingError('WORKER_LOST', `worker ${nodeId} ${why}; the invocation may have run: retry it only if it is safe to run twice`, { details: { node: nodeId } });
      const epoch = this.options.reconnects?.() ?? 0;
      let heardCount = 0;
      // Silence: the worker is lost, unless this gateway's own link is what failed (down, reconnected since the send,
      // or a server that does not answer a ping: a partition nats.js has not noticed yet). Then the worker is not
      // taken for lost, and the caller hears CLUSTER_UNAVAILABLE (the run may have happened all the same).
      const silent = (): void => {
        const at = heardCount;
        void this.linkHeld(epoch).then((held) => {
          if (settled || heardCount !== at) return;
          if (!held) {
            giveUp(new KindlingError('CLUSTER_UNAVAILABLE', `this gateway lost its NATS connection during the run on worker ${nodeId}; the invocation may have run: retry it only if it is safe to run twice`, { retryAfterSeconds: 1, details: { sent: true } }));
            return;
          }
          this.markLost(nodeId);
          giveUp(lost(`stopped answering for ${silenceMs} ms during the run`));
        });
      };
      const heard = (): void => {
        heardCount++;
        if (silence) clearTimeout(silence);
        silence = setTimeout(silent, silenceMs);
      };
      const deadline = setTimeout(() => {
        this.markLost(nodeId);
        giveUp(lost(`sent no result within the function's timeout and ${REMOTE_RUNS_DEFAULTS.deadlineMarginMs} ms`));
      }, deadlineMs);
      const onAbort = (): void => giveUp(options.signal?.reason ?? new KindlingError('CLIENT_DISCONNECTED', 'the invocation was cancelled'));
      const onMessage = (msg: Msg): void => {
        // No responders: the server's status answer (no data) to a request nobody subscribed to.
        if (msg.data.length === 0 && msg.headers?.code === 503) return fail(new NoResponders());
        heard();
        switch (msg.headers?.get(KIND_HEADER)) {
          case 'started': {
            const info = JSON.parse(Buffer.from(msg.data).toString('utf8')) as { id: string; coldStart: boolean; executor: ExecutorName };
            options.onStarted?.(String(info.id), { coldStart: info.coldStart === true, executor: info.executor });
            return;
          }
          case 'out':
            options.onOutput?.(msg.headers.get('s') === 'stdout' ? 'stdout' : 'stderr', Buffer.from(msg.data).toString('utf8'));
            return;
          case 'chunk':
            pieceBytes += msg.data.length;
            // An answer is bounded by the function's output caps; pieces beyond any answer's size are not kept.
            if (pieceBytes > REMOTE_RUNS_DEFAULTS.maxAnswerBytes) return giveUp(new KindlingError('EXECUTOR_FAILED', `worker ${nodeId} sent an answer over ${REMOTE_RUNS_DEFAULTS.maxAnswerBytes} bytes`));
            pieces.push(msg.data);
            return;
          case 'result': {
            const expected = Number(msg.headers.get('chunks') || '0');
            if (expected !== pieces.length) return giveUp(new KindlingError('EXECUTOR_FAILED', `worker ${nodeId} sent ${pieces.length} of the ${expected} pieces of its answer (a NATS message was lost)`));
            let result: InvocationResult;
            try {
              result = this.toResult(nodeId, version, expected > 0 ? Buffer.concat(pieces) : msg.data);
            } catch (error) {
              // The worker's platform error (or an answer that does not add up): the run is over either way.
              return fail(error);
            }
            end();
            resolve(result);
            return;
          }
          default:
            return; // `alive`, or something newer than this gateway: it only resets the silence timer
        }
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.set(runId, { onMessage, fail: giveUp });
      heard();
      const instance = this.options.workers().find((worker) => worker.nodeId === nodeId)?.instance;
      let instanceHeader: ReturnType<typeof natsHeaders> | undefined;
      if (instance !== undefined) {
        instanceHeader = natsHeaders();
        instanceHeader.set(INSTANCE_HEADER, instance);
      }
      try {
        this.nc.publish(invokeSubject(nodeId), frame, { reply: subject, ...(instanceHeader ? { headers: instanceHeader } : {}) });
      } catch (error) {
        fail(noWorkers(`the gateway could not reach NATS to send the invocation: ${(error as Error).message}`));
      }
    });
  }

  /** Whether this node's NATS link held since `epoch`: connected, not reconnected, and the server answers a ping within 1 s. */
  private async linkHeld(epoch: number): Promise<boolean> {
    const same = (): boolean => this.options.connected?.() !== false && (this.options.reconnects?.() ?? 0) === epoch;
    if (!same()) return false;
    let timer: NodeJS.Timeout | undefined;
    try {
      const answered = await Promise.race([this.nc.flush().then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 1_000)))]);
      return answered && same();
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private markLost(nodeId: string): void {
    this.lost.set(nodeId, this.options.workers().find((worker) => worker.nodeId === nodeId)?.heartbeatAt ?? '');
  }

  private toResult(nodeId: string, version: FunctionVersion, frame: Uint8Array): InvocationResult {
    const { meta, rest } = decodeFrame<RunAnswer>(frame);
    if (!meta.ok) throw fromWireError(meta.error, nodeId);
    const result = meta.result;
    if (rest.length !== result.bodyBytes + result.stderrBytes) {
      throw new KindlingError('EXECUTOR_FAILED', `worker ${nodeId} sent an answer of ${rest.length} bytes that says it holds ${result.bodyBytes} + ${result.stderrBytes}`);
    }
    if (result.metered) this.options.onMetered?.({ ...result.metered, meteredElsewhere: false });
    return {
      ...runFactsOf(result),
      tenant: version.tenant,
      functionName: version.name,
      version: version.version,
      body: Buffer.from(rest.subarray(0, result.bodyBytes)),
      stderr: Buffer.from(rest.subarray(result.bodyBytes)),
      node: nodeId,
    };
  }
}

const noWorkers = (message: string): KindlingError => new KindlingError('NO_WORKERS', message, { retryAfterSeconds: 1 });

class NoResponders extends Error {
  constructor() {
    super('no worker listens on that subject');
  }
}
