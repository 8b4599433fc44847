import type { FastifyInstance } from 'fastify';
import type { ExecutorName, RuntimeName } from '../../core/types.js';
import type { FunctionService } from '../../orchestrator/function-service.js';
import type { FunctionSpec } from '../../store/store.js';
import {
  ErrorResponseSchema,
  FunctionNameParamsSchema,
  FunctionSpecSchema,
  FunctionViewSchema,
  type FunctionNameParams,
  type FunctionSpecBody,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };

export function registerFunctionRoutes(app: FastifyInstance, options: { functionService: FunctionService }): void {
  const service = options.functionService;

  app.put<{ Params: FunctionNameParams; Body: FunctionSpecBody }>(
    '/v1/functions/:name',
    {
      schema: {
        tags: ['functions'],
        summary: 'Deploy a function: every PUT makes a new immutable version that invocations then run',
        params: FunctionNameParamsSchema,
        body: FunctionSpecSchema,
        response: { 200: FunctionViewSchema, 201: FunctionViewSchema, ...errors },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const spec: FunctionSpec = { ...body } as FunctionSpec;
      if (body.runtime !== undefined) spec.runtime = body.runtime as RuntimeName;
      if (body.executor !== undefined) spec.executor = body.executor as ExecutorName;
      const { view, created } = await service.deploy(request.params.name, spec);
      reply.code(created ? 201 : 200);
      return view;
    },
  );

  app.get('/v1/functions', { schema: { tags: ['functions'], summary: 'List functions (latest versions)', response: { 200: { type: 'object', properties: { functions: { type: 'array', items: FunctionViewSchema } } }, ...errors } } }, async () => ({
    functions: service.list(),
  }));

  app.get<{ Params: FunctionNameParams }>(
    '/v1/functions/:name',
    { schema: { tags: ['functions'], summary: 'A function and its latest version', params: FunctionNameParamsSchema, response: { 200: FunctionViewSchema, ...errors } } },
    async (request) => service.get(request.params.name),
  );

  app.delete<{ Params: FunctionNameParams }>(
    '/v1/functions/:name',
    { schema: { tags: ['functions'], summary: 'Delete a function, all its versions and its warm sandboxes', params: FunctionNameParamsSchema, response: { 204: { type: 'null' }, ...errors } } },
    async (request, reply) => {
      await service.delete(request.params.name);
      reply.code(204);
      return null;
    },
  );

  // The invoke route takes any body as raw bytes: its own scope replaces the JSON parser with a Buffer catch-all,
  // so every other route keeps parsing JSON.
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
    scope.post<{ Params: FunctionNameParams }>(
      '/v1/functions/:name/invoke',
      {
        schema: {
          tags: ['functions'],
          summary: 'Invoke a function: the raw body in, the raw output out',
          description:
            'The request body (any content type) is the input: stdin of a command, the argument of a handler. The response body is the raw stdout / the handler\'s return value. Headers: x-kindling-invocation-id, x-kindling-function-version, x-kindling-exit-code, x-kindling-duration-ms, x-kindling-cold-start. A handler that throws answers 200 with x-kindling-exit-code 1 and the error text as the body.',
          params: FunctionNameParamsSchema,
          response: errors,
        },
      },
      async (request, reply) => {
        const abort = new AbortController();
        reply.raw.on('close', () => {
          if (!reply.raw.writableFinished) abort.abort(new Error('client disconnected'));
        });
        const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
        const result = await service.invoke(request.params.name, body, { signal: abort.signal, trace: { traceId: request.trace.traceId, traceparent: request.trace.traceparent } });
        request.log.info(
          { invocationId: result.invocationId, function: result.functionName, version: result.version, executor: result.executor, exitCode: result.exitCode, durationMs: result.durationMs, coldStart: result.coldStart, timedOut: result.timedOut },
          'invocation finished',
        );
        reply.headers({
          'x-kindling-invocation-id': result.invocationId,
          'x-kindling-function-version': String(result.version),
          'x-kindling-exit-code': String(result.exitCode),
          'x-kindling-duration-ms': String(result.durationMs),
          'x-kindling-cold-start': String(result.coldStart),
          'x-kindling-executor': result.executor,
          ...(result.timedOut ? { 'x-kindling-timed-out': 'true' } : {}),
        });
        reply.type('application/octet-stream');
        return reply.send(result.body);
      },
    );
  });
}
