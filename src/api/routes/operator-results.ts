import type { FastifyInstance } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import { ErrorResponseSchema } from '../schemas.js';

export const OPERATOR_RESULTS_ROUTE = '/v1/operator/results/:serviceId/:callId';

export interface OperatorResultsRouteOptions {
  results: { open(serviceId: string, callId: string): Promise<{ stream: NodeJS.ReadableStream; sizeBytes: number } | null> };
}

/**
 * Large job results of operator mode (docs/operator.md): public, no key. The chain holds each result's sha256 and size
 * (a KindlingResultRef), so a client checks the bytes itself and this route needs to prove nothing.
 */
export function registerOperatorResultsRoute(app: FastifyInstance, options: OperatorResultsRouteOptions): void {
  app.get<{ Params: { serviceId: string; callId: string } }>(
    OPERATOR_RESULTS_ROUTE,
    {
      schema: {
        tags: ['operator'],
        summary: 'A job result too large for a transaction (operator mode); check it against the sha256 on chain',
        params: { type: 'object', properties: { serviceId: { type: 'string' }, callId: { type: 'string' } }, required: ['serviceId', 'callId'] },
        response: { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema },
      },
    },
    async (request, reply) => {
      const { serviceId, callId } = request.params;
      const found = await options.results.open(serviceId, callId);
      if (found === null) {
        throw new KindlingError('OPERATOR_RESULT_NOT_FOUND', `no large result of service ${serviceId}, call ${callId} is kept here: ids are decimal numbers, and results are kept for a limited time (see the operator's result store bounds)`, { details: { serviceId, callId } });
      }
      reply.header('content-type', 'application/octet-stream');
      reply.header('content-length', String(found.sizeBytes));
      reply.header('cache-control', 'public, max-age=86400, immutable');
      return reply.send(found.stream);
    },
  );
}
