import type { FastifyInstance } from 'fastify';
import type { ExecutorName } from '../../core/types.js';
import type { Executor, ExecutorStatus } from '../../executors/executor.js';
import { HealthSchema, ReadySchema } from '../schemas.js';

const READY_CACHE_MS = 2000;

export interface HealthRouteOptions {
  executors: ReadonlyMap<ExecutorName, Executor>;
  defaultExecutor: ExecutorName;
  /** Why the default executor was chosen (auto-detection explains itself here and in the log). */
  defaultExecutorReason: string;
  isDraining: () => boolean;
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

  app.get('/readyz', { schema: { tags: ['health'], summary: 'Readiness, with the state of every executor', response: { 200: ReadySchema, 503: ReadySchema } } }, async (_request, reply) => {
    const executors = await probeAll();
    const defaultReady = executors.find((status) => status.name === options.defaultExecutor)?.ready === true;
    const ready = defaultReady && !options.isDraining();
    reply.code(ready ? 200 : 503);
    return {
      status: ready ? 'ready' : 'not_ready',
      defaultExecutor: options.defaultExecutor,
      defaultExecutorReason: options.defaultExecutorReason,
      draining: options.isDraining(),
      executors,
    };
  });
}
