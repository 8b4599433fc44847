/**
 * The gateway side of cluster runs: places an invocation on a worker from the registry view (placement.ts), sends it,
 * and turns the worker's messages back into what a local run gives (started, live output, the result or its error).
 *
 * What goes to workers: handler-style functions (a body in, a body out) whose files no other server needs: not those
 * deployed from a bundle, with a dependency layer, Debian packages or a custom image (their files live on the server
 * that took the deploy until bundles move to the object store), and not command functions, whose stdin and stdout
 * stream through the gateway. Those run on the gateway itself, as on a single server.
 */
import { nuid, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';
import type { ExecutorName } from '../core/types.js';
import { isHandlerStyle, type InvocationResult, type InvokeOptions, type RemoteRouter } from '../orchestrator/function-service.js';
import type { FunctionVersion } from '../store/store.js';
import { placeInvocation, type PlacementCandidate } from './placement.js';
import type { WorkerEntry } from './registry.js';
import { KIND_HEADER, RUN_SUBJECT_PREFIX, cancelSubject, decodeFrame, encodeFrame, fromWireError, invokeSubject, type RunAnswer, type RunRequest } from './run-protocol.js';

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
}

export const REMOTE_RUNS_DEFAULTS = { silenceTimeoutMs: 5000 } as const;

/** The key of a version in the registry's `warm` lists. */
export const versionKey = (version: Pick<FunctionVersion, 'tenant' | 'name' | 'version'>): string => `${version.tenant}/${version.name}@${version.version}`;

/** Whether a worker can run this version with what the gateway sends (no files kept only by the server that took the deploy). */
export function remotable(version: FunctionVersion, options: Pick<InvokeOptions, 'io'>): boolean {
  const spec = version.spec;
  return isHandlerStyle(spec) && spec.bundle === undefined && spec.layer === undefined && spec.aptImage === undefined && spec.image === undefined && options.io === undefined;
}

export class RemoteRuns implements RemoteRouter {
  /** Runs this gateway has sent to each worker and not seen end: added to the worker's last heartbeat, which lags. */
  private readonly sent = new Map<string, number>();
  /**
   * One wildcard subscription for the replies of every run (`<prefix>.<runId>`), as nats.js muxes its requests: a
   * subscription per run would cost a SUB and an UNSUB each and wait for its interest to spread over a NATS cluster.
   */
  private readonly prefix = `${RUN_SUBJECT_PREFIX}${nuid.next()}`;
  private readonly waiting = new Map<string, (msg: Msg) => void>();
  private readonly subscription: Subscription;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: RemoteRunsOptions,
  ) {
    this.subscription = nc.subscribe(`${this.prefix}.*`, {
      callback: (error, msg) => {
        if (error) return;
        this.waiting.get(msg.subject.slice(this.prefix.length + 1))?.(msg);
      },
    });
  }

  /** Stops listening for replies (runs still waiting end at their silence timeout). */
  close(): void {
    this.subscription.unsubscribe();
  }

  route(version: FunctionVersion, _executor: ExecutorName, body: Buffer, options: InvokeOptions): Promise<InvocationResult> | null {
    if (!remotable(version, options)) return null;
    // Headers and the request's metadata take a little of max_payload; a larger body runs here (or is refused).
    const maxBytes = (this.nc.info?.max_payload ?? 1024 * 1024) - 64 * 1024;
    const tooLarge = body.length > maxBytes;
    const nodeId = tooLarge ? null : this.place(version, new Set());
    if (nodeId === null || nodeId === this.options.nodeId) {
      if (this.options.runsHere) return null;
      return Promise.reject(
        tooLarge
          ? new KindlingError('PAYLOAD_TOO_LARGE', `a body of ${body.length} bytes is larger than one NATS message may carry to a worker (${maxBytes} bytes with this server's max_payload); raise max_payload in nats-server's configuration or send less`)
          : new KindlingError('NO_WORKERS', 'no worker with a free slot is registered in the cluster; start a worker (kindling serve --cluster ... --role worker) or retry shortly', { retryAfterSeconds: 1 }),
      );
    }
    return this.runOn(nodeId, version, body, options, new Set([nodeId]));
  }

  private place(version: FunctionVersion, exclude: ReadonlySet<string>): string | null {
    const candidates: PlacementCandidate[] = this.options.workers()
      .filter((worker) => !exclude.has(worker.nodeId) && (worker.nodeId !== this.options.nodeId || this.options.runsHere))
      .map((worker) => ({ nodeId: worker.nodeId, capacity: worker.capacity, warm: worker.warm, inFlight: Math.max(worker.inFlight, this.sent.get(worker.nodeId) ?? 0) }));
    return placeInvocation(candidates, versionKey(version), { spread: this.options.spread ?? 2 });
  }

  private async runOn(nodeId: string, version: FunctionVersion, body: Buffer, options: InvokeOptions, tried: Set<string>): Promise<InvocationResult> {
    this.sent.set(nodeId, (this.sent.get(nodeId) ?? 0) + 1);
    try {
      return await this.send(nodeId, version, body, options);
    } catch (error) {
      // Nobody listened (the worker left since its last heartbeat): nothing ran; one other worker is tried.
      if (error instanceof NoResponders) {
        const next = this.place(version, tried);
        if (next !== null && next !== this.options.nodeId) return this.runOn(next, version, body, options, tried.add(next));
        throw new KindlingError('NO_WORKERS', `worker ${nodeId} left the cluster and no other worker has a free slot; retry shortly`, { retryAfterSeconds: 1 });
      }
      throw error;
    } finally {
      const left = (this.sent.get(nodeId) ?? 1) - 1;
      if (left <= 0) this.sent.delete(nodeId);
      else this.sent.set(nodeId, left);
    }
  }

  private send(nodeId: string, version: FunctionVersion, body: Buffer, options: InvokeOptions): Promise<InvocationResult> {
    const runId = nuid.next();
    const subject = `${this.prefix}.${runId}`;
    const silenceMs = this.options.silenceTimeoutMs ?? REMOTE_RUNS_DEFAULTS.silenceTimeoutMs;
    return new Promise<InvocationResult>((resolve, reject) => {
      const pieces: Uint8Array[] = [];
      let silence: NodeJS.Timeout | null = null;
      const end = (): void => {
        this.waiting.delete(runId);
        if (silence) clearTimeout(silence);
        options.signal?.removeEventListener('abort', onAbort);
      };
      const fail = (error: unknown): void => {
        end();
        reject(error);
      };
      const heard = (): void => {
        if (silence) clearTimeout(silence);
        silence = setTimeout(
          () => fail(new KindlingError('WORKER_LOST', `worker ${nodeId} stopped answering for ${silenceMs} ms during the run; the invocation may have run: retry it only if it is safe to run twice`, { details: { node: nodeId } })),
          silenceMs,
        );
      };
      const onAbort = (): void => {
        try {
          this.nc.publish(cancelSubject(nodeId), runId);
        } catch {
          // The connection is gone: the worker's run ends at its timeout.
        }
        fail(options.signal?.reason ?? new KindlingError('CLIENT_DISCONNECTED', 'the invocation was cancelled'));
      };
      const onMessage = (msg: Msg): void => {
        heard();
        // No responders: the server's status answer to a request nobody subscribed to.
        if (msg.headers?.code === 503) return fail(new NoResponders());
        switch (msg.headers?.get(KIND_HEADER)) {
          case 'started': {
            const info = JSON.parse(Buffer.from(msg.data).toString('utf8')) as { id: string; coldStart: boolean; executor: ExecutorName };
            options.onStarted?.(info.id, { coldStart: info.coldStart, executor: info.executor });
            return;
          }
          case 'out':
            options.onOutput?.(msg.headers.get('s') === 'stdout' ? 'stdout' : 'stderr', Buffer.from(msg.data).toString('utf8'));
            return;
          case 'chunk':
            pieces.push(msg.data);
            return;
          case 'result': {
            end();
            try {
              resolve(this.toResult(nodeId, version, pieces.length > 0 ? Buffer.concat(pieces) : msg.data));
            } catch (error) {
              reject(error);
            }
            return;
          }
          default:
            return; // `alive`, or something newer than this gateway: it only resets the silence timer
        }
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.set(runId, onMessage);
      const request: RunRequest = {
        runId,
        version,
        caps: options.scope?.caps ?? {},
        ...(options.trace ? { traceparent: options.trace.traceparent } : {}),
        output: options.onOutput !== undefined,
      };
      heard();
      try {
        this.nc.publish(invokeSubject(nodeId), encodeFrame(request, body), { reply: subject });
      } catch (error) {
        fail(new KindlingError('NO_WORKERS', `the gateway could not reach NATS to send the invocation: ${(error as Error).message}`, { retryAfterSeconds: 1 }));
      }
    });
  }

  private toResult(nodeId: string, version: FunctionVersion, frame: Uint8Array): InvocationResult {
    const { meta, rest } = decodeFrame<RunAnswer>(frame);
    if (!meta.ok) throw fromWireError(meta.error, nodeId);
    const result = meta.result;
    return {
      invocationId: result.invocationId,
      tenant: version.tenant,
      functionName: version.name,
      version: version.version,
      exitCode: result.exitCode,
      body: Buffer.from(rest.subarray(0, result.bodyBytes)),
      stderr: Buffer.from(rest.subarray(result.bodyBytes)),
      durationMs: result.durationMs,
      coldStart: result.coldStart,
      timedOut: result.timedOut,
      ...(result.oomKilled === undefined ? {} : { oomKilled: result.oomKilled }),
      ...(result.truncated === undefined ? {} : { truncated: result.truncated }),
      executor: result.executor,
      node: nodeId,
    };
  }
}

class NoResponders extends Error {
  constructor() {
    super('no worker listens on that subject');
  }
}
