import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { BodyPump } from '../../executors/executor.js';
import type { StreamRelay } from '../stream-relay.js';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Static } from '@sinclair/typebox';
import type { SandboxService } from '../../orchestrator/sandboxes.js';
import { ByteLimit } from '../raw-body.js';
import { startSse, writeSseEvent } from '../sse.js';
import { errorBody } from '../errors.js';
import { KindlingError } from '../../core/errors.js';
import { registerSandboxPortRoutes } from './sandbox-ports.js';
import {
  BinaryBodySchema,
  CreateSandboxRequestSchema,
  ErrorResponseSchema,
  ExecutionResultSchema,
  SandboxCommandListSchema,
  SandboxCommandParamsSchema,
  SandboxCommandRequestSchema,
  SandboxCommandSchema,
  SandboxFileListSchema,
  SandboxFileWrittenSchema,
  SandboxMkdirRequestSchema,
  SandboxMkdirResultSchema,
  SandboxTarWrittenSchema,
  SandboxIdParamsSchema,
  SandboxListQuerySchema,
  SandboxListSchema,
  UpdateSandboxRequestSchema,
  SandboxPathQuerySchema,
  SandboxSchema,
  ForkRequestSchema,
  ForkResultSchema,
  SnapshotListQuerySchema,
  SnapshotListSchema,
  SnapshotSchema,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const tags = ['sandboxes'];
type IdParams = Static<typeof SandboxIdParamsSchema>;
type PathQuery = Static<typeof SandboxPathQuerySchema>;
type CommandParams = Static<typeof SandboxCommandParamsSchema>;
/** Quiet commands must not look like a dead connection to proxies and clients. */
const SSE_KEEPALIVE_MS = 15_000;

/** /v1/sandboxes: persistent sandboxes (src/orchestrator/sandboxes.ts). Thin: HTTP <-> the service. */
export function registerSandboxRoutes(app: FastifyInstance, options: { sandboxes: SandboxService; toError?: (error: unknown) => KindlingError; streamRelay?: StreamRelay }): void {
  const service = options.sandboxes;
  const relay = options.streamRelay;
  const toError = options.toError ?? ((error: unknown) => (error instanceof KindlingError ? error : new KindlingError('INTERNAL', (error as Error).message ?? 'internal error')));
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
    {
      schema: {
        tags,
        summary: "The caller's tenant's sandboxes (stopped ones are listed for an hour), filtered by state and metadata",
        description: '`?state=` one state; `?metadata.KEY=VALUE` (repeatable with other keys, at most 16): only sandboxes whose metadata has KEY exactly equal to VALUE; every pair must match.',
        querystring: SandboxListQuerySchema,
        response: { 200: SandboxListSchema, ...errors },
      },
    },
    async (request) => {
      const query = request.query as Record<string, string>;
      const metadata = Object.fromEntries(Object.entries(query).filter(([key]) => key.startsWith('metadata.')).map(([key, value]) => [key.slice('metadata.'.length), value]));
      return { sandboxes: service.list(request.principal.tenant, { ...(request.query.state === undefined ? {} : { state: request.query.state }), metadata }) };
    },
  );

  app.patch<{ Params: IdParams; Body: Static<typeof UpdateSandboxRequestSchema> }>(
    '/v1/sandboxes/:id',
    { schema: { tags, summary: 'Set the time left to live (timeoutMs from now, as E2B\'s setTimeout) or the idle timeout', params: SandboxIdParamsSchema, body: UpdateSandboxRequestSchema, response: { 200: SandboxSchema, ...errors } } },
    async (request) => service.update(request.principal.tenant, request.params.id, request.body),
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

  app.post<{ Params: IdParams }>(
    '/v1/sandboxes/:id/hibernate',
    {
      schema: {
        tags,
        summary: 'Hibernate the sandbox: it holds no RAM until resumed; idempotent',
        description: 'Where the executor can save processes and memory (capability hibernate) they come back on resume or the next command (hibernation.processesKept: true); elsewhere the files are kept and the processes end (processesKept: false: a resume starts a new process tree). Not counted against maxPausedSandboxes; the sandbox keeps its disk. A command on it resumes it unless autoResume is false (409 SANDBOX_PAUSED). Executors that keep no files once the processes end answer 400 SANDBOXES_UNSUPPORTED.',
        params: SandboxIdParamsSchema,
        body: { type: 'object', additionalProperties: false, nullable: true, examples: [{}] },
        response: { 200: SandboxSchema, ...errors },
      },
    },
    async (request) => service.hibernate(request.principal.tenant, request.params.id),
  );

  /* Commands: foreground (JSON or SSE), background handles, their logs (SSE) and kill ---------------------------- */

  app.post<{ Params: IdParams; Body: Static<typeof SandboxCommandRequestSchema> }>(
    '/v1/sandboxes/:id/commands',
    {
      schema: {
        tags,
        summary: 'Run a command in the live sandbox: its result (the execute contract), streamed as SSE, or started in the background',
        description: [
          "A non-zero exit or a timeout is a 200 result. The timeout kills the command's process tree; the sandbox and its other processes live on. Processes the command leaves in the background keep running (redirect their output). A paused sandbox is resumed first unless autoResume is false (409 SANDBOX_PAUSED).",
          'With `Accept: text/event-stream` the output streams as SSE events `stdout`/`stderr`, then `exit` with the result (as POST /v1/execute).',
          'With `background: true` the answer is 202 with the command\'s handle `{id, pid, state, ...}` as soon as it runs; follow it with GET .../commands/CID/logs, end it with DELETE .../commands/CID.',
        ].join(' '),
        params: SandboxIdParamsSchema,
        body: SandboxCommandRequestSchema,
        response: { 200: ExecutionResultSchema, 202: SandboxCommandSchema, ...errors },
      },
    },
    async (request, reply) => {
      const tenant = request.principal.tenant;
      if (request.body.background === true) {
        const view = await service.start(tenant, request.params.id, request.body);
        reply.code(202);
        return view;
      }
      if (!(request.headers.accept ?? '').includes('text/event-stream')) return service.run(tenant, request.params.id, request.body);
      // SSE: errors before the command starts are ordinary HTTP errors; after, they are an `error` event.
      const raw = reply.raw;
      let streaming = false;
      let keepAlive: NodeJS.Timeout | null = null;
      try {
        const result = await service.run(tenant, request.params.id, request.body, {
          onStarted: (id) => {
            streaming = true;
            reply.hijack();
            startSse(raw, { 'x-kindling-command-id': id, 'x-request-id': request.id });
            keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
          },
          onOutput: (stream, text) => writeSseEvent(raw, stream, text),
        });
        writeSseEvent(raw, 'exit', JSON.stringify(result));
        raw.end();
      } catch (error) {
        if (!streaming) throw error;
        request.log.error({ err: error }, 'sandbox command failed after the stream started');
        writeSseEvent(raw, 'error', JSON.stringify(errorBody(toError(error), request.id)));
        raw.end();
      } finally {
        if (keepAlive) clearInterval(keepAlive);
      }
      return reply;
    },
  );

  app.get<{ Params: IdParams }>(
    '/v1/sandboxes/:id/commands',
    { schema: { tags, summary: "The sandbox's background commands: running ones, then the most recently finished (at most 16 kept)", params: SandboxIdParamsSchema, response: { 200: SandboxCommandListSchema, ...errors } } },
    async (request) => ({ commands: service.listCommands(request.principal.tenant, request.params.id) }),
  );

  app.get<{ Params: CommandParams }>(
    '/v1/sandboxes/:id/commands/:cid',
    { schema: { tags, summary: 'One background command: state, pid, exitCode once exited', params: SandboxCommandParamsSchema, response: { 200: SandboxCommandSchema, ...errors } } },
    async (request) => service.getCommand(request.principal.tenant, request.params.id, request.params.cid),
  );

  app.delete<{ Params: CommandParams }>(
    '/v1/sandboxes/:id/commands/:cid',
    { schema: { tags, summary: "Kill a background command's process tree (the sandbox and its other processes live on); answers its final state. Idempotent", params: SandboxCommandParamsSchema, response: { 200: SandboxCommandSchema, ...errors } } },
    async (request) => service.killCommand(request.principal.tenant, request.params.id, request.params.cid),
  );

  app.get<{ Params: CommandParams }>(
    '/v1/sandboxes/:id/commands/:cid/logs',
    {
      schema: {
        tags,
        summary: "A background command's output as SSE: what was kept so far, then live, then `exit`",
        description: 'Events `stdout` and `stderr` (text), then `exit` with the command (as GET .../commands/CID). A follower joining late gets the output kept so far (the newest outputBytes; `droppedBytes` says how much went before). A finished command answers its kept output and `exit` at once.',
        params: SandboxCommandParamsSchema,
        response: { 200: { description: 'Server-sent events', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors },
      },
    },
    async (request, reply) => {
      const raw = reply.raw;
      const queue: string[] = [];
      let live = false;
      let finish: () => void = () => {};
      const ended = new Promise<void>((resolve) => (finish = resolve));
      const write = (event: string, data: string): void => {
        if (live) writeSseEvent(raw, event, data);
        else queue.push(event, data);
      };
      const following = service.followCommand(request.principal.tenant, request.params.id, request.params.cid, (event) => {
        if (event.type === 'output') write(event.chunk.stream, event.chunk.data);
        else {
          write('exit', JSON.stringify(event.view));
          finish();
        }
      });
      reply.hijack();
      startSse(raw, { 'x-request-id': request.id });
      for (const chunk of following.replay) writeSseEvent(raw, chunk.stream, chunk.data);
      for (let i = 0; i < queue.length; i += 2) writeSseEvent(raw, queue[i]!, queue[i + 1]!);
      live = true;
      if (following.view.state === 'exited') {
        writeSseEvent(raw, 'exit', JSON.stringify(following.view));
        finish();
      }
      const keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
      raw.on('close', finish);
      await ended;
      clearInterval(keepAlive);
      following.release();
      if (!raw.writableEnded) raw.end();
      return reply;
    },
  );

  /* ---------------------------------------------------------------------------------------------------------------- */

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
      // A stream with a descriptor goes to the client through the splice relay (stream-relay.ts): the bytes never enter
      // this process. Chunked HTTP/1.1 only; else through node. (Files read on the host, direct-files.ts, come as a
      // node stream: see there why.)
      if (relay !== undefined && stream instanceof Socket && request.raw.httpVersion === '1.1') {
        reply.hijack();
        const raw = reply.raw;
        raw.writeHead(200, { 'content-type': 'application/octet-stream', 'x-request-id': request.id });
        raw.flushHeaders();
        if (relay.canTakeOutput(stream, raw)) {
          await relay.takeOutput(stream, raw, raw);
          if (!raw.destroyed) raw.end();
        } else {
          stream.once('error', (error) => raw.destroy(error));
          stream.pipe(raw);
        }
        return reply;
      }
      reply.type('application/octet-stream');
      return reply.send(stream);
    },
  );

  app.post<{ Params: IdParams; Body: Static<typeof SandboxMkdirRequestSchema> }>(
    '/v1/sandboxes/:id/files/mkdir',
    { schema: { tags, summary: 'Make a directory in the sandbox (parents too unless parents: false); an existing directory is fine', params: SandboxIdParamsSchema, body: SandboxMkdirRequestSchema, response: { 201: SandboxMkdirResultSchema, ...errors } } },
    async (request, reply) => {
      const made = await service.mkdir(request.principal.tenant, request.params.id, request.body.path, request.body.parents ?? true);
      reply.code(201);
      return made;
    },
  );

  app.get<{ Params: IdParams; Querystring: PathQuery }>(
    '/v1/sandboxes/:id/files/tar',
    {
      schema: {
        tags,
        summary: 'Download a directory of the sandbox as a tar archive (streamed)',
        description: 'Made by tar inside the sandbox: names relative to the directory, symlinks kept as symlinks (never followed), numeric owners.',
        params: SandboxIdParamsSchema,
        querystring: SandboxPathQuerySchema,
        response: { 200: { description: 'A tar archive', content: { 'application/x-tar': { schema: BinaryBodySchema } } }, ...errors },
      },
    },
    async (request, reply) => {
      const stream = await service.readTar(request.principal.tenant, request.params.id, request.query.path);
      reply.type('application/x-tar');
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

  /* -- snapshots and forks ---------------------------------------------------------------------------------------- */

  app.post<{ Params: IdParams }>(
    '/v1/sandboxes/:id/snapshots',
    {
      schema: {
        tags,
        summary: 'Snapshot the sandbox\'s files (immutable; kept until deleted, across restarts)',
        description: 'The sandbox is frozen while its /work is copied (a paused one stays paused; a stopped one is started again first). On the sandbox, docker and microvm executors a snapshot holds files only (memory: false): processes are not kept; on gvisor it keeps memory and processes too (memory: true), and sandboxes made from it go on with them. Counted against the tenant\'s --max-snapshots-per-tenant (429 TENANT_SNAPSHOT_LIMIT).',
        params: SandboxIdParamsSchema,
        body: { type: 'object', additionalProperties: false, nullable: true, examples: [{}] },
        response: { 201: SnapshotSchema, ...errors },
      },
    },
    async (request, reply) => {
      const snapshot = await service.snapshot(request.principal.tenant, request.params.id);
      reply.code(201);
      return snapshot;
    },
  );

  app.get<{ Params: IdParams }>(
    '/v1/sandboxes/:id/snapshots',
    { schema: { tags, summary: 'Snapshots of this sandbox', params: SandboxIdParamsSchema, response: { 200: SnapshotListSchema, ...errors } } },
    async (request) => ({ snapshots: service.listSnapshots(request.principal.tenant, request.params.id) }),
  );

  app.post<{ Params: IdParams; Body: Static<typeof ForkRequestSchema> }>(
    '/v1/sandboxes/:id/fork',
    {
      schema: {
        tags,
        summary: 'Snapshot the sandbox and make `count` sandboxes from it in one call',
        description: 'Each fork has a disk of its own over the shared snapshot: forks never see each other\'s (or the parent\'s) later writes. A count the tenant\'s sandbox cap cannot take answers 429 TENANT_SANDBOX_LIMIT (over the cap itself: 400 LIMIT_OUT_OF_RANGE) before anything is made.',
        params: SandboxIdParamsSchema,
        body: ForkRequestSchema,
        response: { 201: ForkResultSchema, ...errors },
      },
    },
    async (request, reply) => {
      const result = await service.fork(request.principal.tenant, request.params.id, request.body.count);
      reply.code(201);
      return result;
    },
  );

  app.get<{ Querystring: Static<typeof SnapshotListQuerySchema> }>(
    '/v1/snapshots',
    { schema: { tags, summary: "The caller's tenant's snapshots (of one sandbox with ?sandboxId=)", querystring: SnapshotListQuerySchema, response: { 200: SnapshotListSchema, ...errors } } },
    async (request) => ({ snapshots: service.listSnapshots(request.principal.tenant, request.query.sandboxId) }),
  );

  app.get<{ Params: IdParams }>(
    '/v1/snapshots/:id',
    { schema: { tags, summary: 'One snapshot', params: SandboxIdParamsSchema, response: { 200: SnapshotSchema, ...errors } } },
    async (request) => service.getSnapshot(request.principal.tenant, request.params.id),
  );

  app.delete<{ Params: IdParams }>(
    '/v1/snapshots/:id',
    { schema: { tags, summary: 'Delete a snapshot and its files (409 SNAPSHOT_IN_USE while sandboxes are made from it)', params: SandboxIdParamsSchema, response: { 204: { type: 'null', description: 'Deleted' }, ...errors } } },
    async (request, reply) => {
      await service.deleteSnapshot(request.principal.tenant, request.params.id);
      reply.code(204);
      return null;
    },
  );

  /* ---------------------------------------------------------------------------------------------------------------- */

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
      async (request, reply) => upload(request, reply, (tenant, body) => service.writeFile(tenant, request.params.id, request.query.path, body), true),
    );
    scope.put<{ Params: IdParams; Querystring: PathQuery }>(
      '/v1/sandboxes/:id/files/tar',
      {
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, body: { content: { 'application/x-tar': { schema: BinaryBodySchema } } } } as typeof schema, url }) },
        schema: {
          tags,
          summary: 'Upload a tar archive and extract it into a directory of the sandbox (streamed; the directory is made when missing)',
          description: 'Each entry is checked as it streams in: absolute names, ".." segments, symlinks or hard links pointing out of the directory, devices and fifos answer 400 SANDBOX_TAR_INVALID, as does a corrupt or truncated archive. The extraction runs inside the sandbox into a staging directory that is merged in only once the whole archive was accepted, so a refused archive changes nothing. Bounded by diskMb (413 SANDBOX_DISK_FULL).',
          params: SandboxIdParamsSchema,
          querystring: SandboxPathQuerySchema,
          response: { 201: SandboxTarWrittenSchema, ...errors },
        },
      },
      // Not pumpable: the body is always a stream here (TarGuard reads every header).
      async (request, reply) => upload(request, reply, (tenant, body) => service.writeTar(tenant, request.params.id, request.query.path, body as Readable)),
    );
  });

  /**
   * A streamed upload (file or tar): bounded by the sandbox's diskMb, and a refused one read to its end. `pumpable`:
   * a large body with a declared length within diskMb may be handed to the writer as a pump through the splice relay
   * (stream-relay.ts: the bytes never enter this process).
   */
  async function upload<T>(request: FastifyRequest<{ Params: IdParams }>, reply: FastifyReply, write: (tenant: string, body: Readable | BodyPump) => Promise<T>, pumpable = false): Promise<T> {
    const tenant = request.principal.tenant;
    const diskBytes = service.get(tenant, request.params.id).limits.diskMb * 1024 * 1024;
    const raw = (request.body as IncomingMessage | undefined) ?? request.raw;
    const limited = (): Readable => raw.pipe(new ByteLimit(diskBytes, "the sandbox's diskMb"));
    const held = pumpable && relay !== undefined && Number(raw.headers['content-length']) <= diskBytes ? relay.holdUpload(raw, reply.raw, limited) : null;
    const body = held !== null ? (((stdin) => held.pumpInto(stdin)) satisfies BodyPump) : limited();
    try {
      const written = await write(tenant, body);
      reply.code(201);
      return written;
    } finally {
      // A refused upload (disk full, bad path) is read to its end and dropped, so that the client gets the answer
      // instead of a connection reset while it still sends.
      if (held !== null) held.release();
      else if (!raw.readableEnded) {
        raw.unpipe();
        raw.resume();
      }
    }
  }
}
