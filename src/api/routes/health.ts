import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ExecutorName } from '../../core/types.js';
import type { Executor, ExecutorStatus } from '../../executors/executor.js';
import { HealthSchema, ReadySchema } from '../schemas.js';

const READY_CACHE_MS = 2000;

export interface HealthRouteOptions {
  /** Only probed here. */
  executors: ReadonlyMap<ExecutorName, Pick<Executor, 'probe'>>;
  defaultExecutor: ExecutorName;
  /** Why the default executor was chosen (auto-detection explains itself here and in the log). */
  defaultExecutorReason: string;
  isDraining: () => boolean;
  /** Cluster mode: why this node cannot serve (NATS lost, a gateway that sees no worker); empty when it can. */
  clusterReasons?: () => string[];
  /**
   * Whether the request may see each executor's findings (reasons and details name host paths, cgroups, the sandbox
   * uid and versions): the admin's, or everyone's in open local mode. Others get ready/not ready and why, in words of
   * the server's own.
   */
  showDetails: (request: FastifyRequest) => boolean;
}

export function registerHealthRoutes(app: FastifyInstance, options: HealthRouteOptions): void {
  app.get('/healthz', { schema: { tags: ['health'], summary: 'Liveness: 200 once the server accepts work', response: { 200: HealthSchema } } }, async () => ({ status: 'ok' }));

  // Probes spawn processes and ask the engine: a scraper or load balancer polling /readyz gets a cached answer.
  let cached: { at: number; statuses: Promise<ExecutorStatus[]> } | null = null;
  const probeAll = (): Promise<ExecutorStatus[]> => {
    if (cached === null || Date.now() - cached.at > READY_CACHE_MS) {
      cached = { at: Date.now(), statuses: Promise.all([...options.executors.values()].map((executor) => executor.probe())) };
    }
    return cached.statuses;
  };

  app.get('/readyz', { schema: { tags: ['health'], summary: 'Readiness: ready or not and why; with the admin key, the state of every executor', response: { 200: ReadySchema, 503: ReadySchema } } }, async (request, reply) => {
    const executors = await probeAll();
    const defaultReady = executors.find((status) => status.name === options.defaultExecutor)?.ready === true;
    const draining = options.isDraining();
    const clusterReasons = options.clusterReasons?.() ?? [];
    const ready = defaultReady && !draining && clusterReasons.length === 0;
    const reasons: string[] = [];
    if (draining) reasons.push('the server is shutting down (draining)');
    if (!defaultReady) reasons.push(`the default executor (${options.defaultExecutor}) is not ready`);
    reasons.push(...clusterReasons);
    reply.code(ready ? 200 : 503);
    const status = ready ? 'ready' : 'not_ready';
    if (options.showDetails(request)) {
      return { status, reasons, defaultExecutor: options.defaultExecutor, defaultExecutorReason: options.defaultExecutorReason, draining, executors };
    }
    return { status, reasons, defaultExecutor: options.defaultExecutor, draining, executors: executors.map(({ name, ready: up }) => ({ name, ready: up })) };
  });
}
