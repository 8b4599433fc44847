import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Static } from '@sinclair/typebox';
import type { SandboxService } from '../../orchestrator/sandboxes.js';
import { ByteLimit } from '../raw-body.js';
import { registerSandboxPortRoutes } from './sandbox-ports.js';
import {
  BinaryBodySchema,
  CreateSandboxRequestSchema,
  ErrorResponseSchema,
  ExecutionResultSchema,
  SandboxCommandRequestSchema,
  SandboxFileListSchema,
  SandboxFileWrittenSchema,
  SandboxIdParamsSchema,
  SandboxListQuerySchema,
  SandboxListSchema,
  SandboxPathQuerySchema,
  SandboxSchema,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const tags = ['sandboxes'];
type IdParams = Static<typeof SandboxIdParamsSchema>;
type PathQuery = Static<typeof SandboxPathQuerySchema>;

/** /v1/sandboxes: persistent sandboxes (src/orchestrator/sandboxes.ts). Thin: HTTP <-> the service. */
export function registerSandboxRoutes(app: FastifyInstance, options: { sandboxes: SandboxService }): void {
  const service = options.sandboxes;
  // Ports: /v1/sandboxes/ID/ports/PORT/... (sandbox-ports.ts).
  registerSandboxPortRoutes(app, options);

  app.post<{ Body: Static<typeof CreateSandboxRequestSchema> }>(
    '/v1/sandboxes',
    { schema: { tags, summary: 'Create a persistent sandbox (commands, files, pause/resume)', body: CreateSandboxRequestSchema, response: { 201: SandboxSchema, ...errors } } },
    async (request, reply) => {
      const { limits, ...rest } = request.body;
      const view = await service.create(request.principal.tenant, { ...rest, ...limits });
      reply.code(201);
      return view;
    },
  );

  app.get<{ Querystring: Static<typeof SandboxListQuerySchema> }>(
    '/v1/sandboxes',
    { schema: { tags, summary: "The caller's tenant's sandboxes (stopped ones are listed for an hour)", querystring: SandboxListQuerySchema, response: { 200: SandboxListSchema, ...errors } } },
    async (request) => ({ sandboxes: service.list(request.principal.tenant, request.query.state) }),
  );

  app.get<{ Params: IdParams }>(
    '/v1/sandboxes/:id',
    { schema: { tags, summary: 'One sandbox: state, limits, timeouts, resource use', params: SandboxIdParamsSchema, response: { 200: SandboxSchema, ...errors } } },
    async (request) => service.get(request.principal.tenant, request.params.id),
  );

  app.delete<{ Params: IdParams }>(
    '/v1/sandboxes/:id',
    { schema: { tags, summary: 'Kill every process of the sandbox and remove it and its files', params: SandboxIdParamsSchema, response: { 204: { type: 'null', description: 'Deleted' }, ...errors } } },
    async (request, reply) => {
      await service.delete(request.principal.tenant, request.params.id);
      reply.code(204);
      return null;
    },
  );

  app.post<{ Params: IdParams }>(
    '/v1/sandboxes/:id/pause',
    { schema: { tags, summary: 'Freeze every process of the sandbox (cgroup freezer: no CPU used); idempotent', params: SandboxIdParamsSchema, body: { type: 'object', additionalProperties: false, nullable: true, examples: [{}] }, response: { 200: SandboxSchema, ...errors } } },
    async (request) => service.pause(request.principal.tenant, request.params.id),
  );

  app.post<{ Params: IdParams }>(
    '/v1/sandboxes/:id/resume',
    { schema: { tags, summary: 'Thaw a paused sandbox; idempotent', params: SandboxIdParamsSchema, body: { type: 'object', additionalProperties: false, nullable: true, examples: [{}] }, response: { 200: SandboxSchema, ...errors } } },
    async (request) => service.resume(request.principal.tenant, request.params.id),
  );

  app.post<{ Params: IdParams; Body: Static<typeof SandboxCommandRequestSchema> }>(
    '/v1/sandboxes/:id/commands',
    {
      schema: {
        tags,
        summary: 'Run a command in the live sandbox and answer its result (the execute contract)',
        description: 'A non-zero exit or a timeout is a 200 result. The timeout kills the command\'s process tree; the sandbox and its other processes live on. Processes the command leaves in the background keep running (redirect their output). A paused sandbox is resumed first unless autoResume is false (409 SANDBOX_PAUSED).',
        params: SandboxIdParamsSchema,
        body: SandboxCommandRequestSchema,
        response: { 200: ExecutionResultSchema, ...errors },
      },
    },
    async (request) => service.run(request.principal.tenant, request.params.id, request.body),
  );

  app.get<{ Params: IdParams; Querystring: PathQuery }>(
    '/v1/sandboxes/:id/files/list',
    { schema: { tags, summary: 'List a directory of the sandbox: names, types, sizes, modes', params: SandboxIdParamsSchema, querystring: SandboxPathQuerySchema, response: { 200: SandboxFileListSchema, ...errors } } },
    async (request) => service.listFiles(request.principal.tenant, request.params.id, request.query.path),
  );

  app.get<{ Params: IdParams; Querystring: PathQuery }>(
    '/v1/sandboxes/:id/files',
    {
      schema: {
        tags,
        summary: 'Download a file of the sandbox (streamed)',
        description: 'The path is resolved inside the sandbox (its mount namespace, its uid): symlinks lead to the sandbox\'s own files, never the host\'s.',
        params: SandboxIdParamsSchema,
        querystring: SandboxPathQuerySchema,
        response: { 200: { description: 'The file\'s bytes', content: { 'application/octet-stream': { schema: BinaryBodySchema } } }, ...errors },
      },
    },
    async (request, reply) => {
      const stream = await service.readFile(request.principal.tenant, request.params.id, request.query.path);
      reply.type('application/octet-stream');
      return reply.send(stream);
    },
  );

  app.delete<{ Params: IdParams; Querystring: PathQuery }>(
    '/v1/sandboxes/:id/files',
    { schema: { tags, summary: 'Remove a file or a directory (recursively) of the sandbox', params: SandboxIdParamsSchema, querystring: SandboxPathQuerySchema, response: { 204: { type: 'null', description: 'Removed' }, ...errors } } },
    async (request, reply) => {
      await service.removeFile(request.principal.tenant, request.params.id, request.query.path);
      reply.code(204);
      return null;
    },
  );

  // Uploads take any body as raw bytes, streamed into the sandbox (their own scope keeps JSON parsing elsewhere).
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void) => done(null, payload));
    scope.put<{ Params: IdParams; Querystring: PathQuery }>(
      '/v1/sandboxes/:id/files',
      {
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, body: { content: { 'application/octet-stream': { schema: BinaryBodySchema } } } } as typeof schema, url }) },
        schema: {
          tags,
          summary: 'Upload a file into the sandbox (streamed; parents are made; bounded by the sandbox\'s diskMb)',
          description: 'The raw request body is the file. A body that does not fit (diskMb) answers 413 SANDBOX_DISK_FULL and leaves no partial file. Writable: /work and /tmp.',
          params: SandboxIdParamsSchema,
          querystring: SandboxPathQuerySchema,
          response: { 201: SandboxFileWrittenSchema, ...errors },
        },
      },
      async (request, reply) => {
        const tenant = request.principal.tenant;
        const diskBytes = service.get(tenant, request.params.id).limits.diskMb * 1024 * 1024;
        const upload = (request.body as IncomingMessage | undefined) ?? request.raw;
        const body = upload.pipe(new ByteLimit(diskBytes, "the sandbox's diskMb"));
        try {
          const written = await service.writeFile(tenant, request.params.id, request.query.path, body);
          reply.code(201);
          return written;
        } finally {
          // A refused upload (disk full, bad path) is read to its end and dropped, so that the client gets the answer
          // instead of a connection reset while it still sends.
          if (!upload.readableEnded) {
            upload.unpipe();
            upload.resume();
          }
        }
      },
    );
  });
}
