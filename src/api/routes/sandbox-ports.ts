/**
 * /v1/sandboxes/ID/ports/PORT/...: HTTP (any method, path and query) and upgrades (WebSocket or any other protocol
 * switch) proxied to a server listening on PORT inside the sandbox, with the caller's key (SandboxService.openPort:
 * tenant isolation, auto-resume, the per-sandbox connection cap; the executor's ports.ts: how the bytes get in).
 *
 * One upstream connection per request (no keep-alive to the sandbox): the request's body streams to it and its
 * answer streams back, with backpressure both ways (pipes). Headers pass on except the hop-by-hop ones and the
 * caller's Authorization (the key is the platform's, never the sandbox's); the sandbox sees X-Forwarded-For,
 * -Host, -Proto and -Prefix (/v1/sandboxes/ID/ports/PORT, for servers that build absolute links). An upgrade request
 * is written to the sandbox's server as it came (without Authorization) and the two sockets are then joined as raw
 * bytes: the sandbox's own answer (101 or a refusal) reaches the client unchanged.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import type { SandboxService } from '../../orchestrator/sandboxes.js';
import { BinaryBodySchema, ErrorResponseSchema } from '../schemas.js';

const PortParamsSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 128 }),
  port: Type.String({ pattern: '^[0-9]{1,5}$', description: 'TCP port inside the sandbox (1-65535)', examples: ['8000'] }),
  '*': Type.Optional(Type.String({ description: 'Path passed on to the sandbox\'s server (with the query)', examples: ['index.html'] })),
});
type PortParams = Static<typeof PortParamsSchema>;
const DocParamsSchema = Type.Object({
  id: PortParamsSchema.properties.id,
  port: PortParamsSchema.properties.port,
  path: Type.String({ description: 'Path passed on to the sandbox\'s server, with the query (may be empty: /v1/sandboxes/ID/ports/PORT/)', examples: ['index.html'] }),
});

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
/** RFC 9110 7.6.1 and the legacy ones; `upgrade` passes on for upgrade requests only. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const PREFIX = /^\/v1\/sandboxes\/[^/?]+\/ports\/[0-9]+/;

/** The headers passed on: without hop-by-hop ones (and those the Connection header names) and without `drop`. */
function passOn(headers: IncomingHttpHeaders, drop: readonly string[] = []): Record<string, string | string[]> {
  const named = new Set(String(headers.connection ?? '').toLowerCase().split(',').map((token) => token.trim()).filter(Boolean));
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name) || drop.includes(name)) continue;
    out[name] = value;
  }
  return out;
}

/** The path and query after /v1/sandboxes/ID/ports/PORT, as the client wrote them (not decoded). */
function upstreamPath(url: string): { prefix: string; path: string } {
  const prefix = PREFIX.exec(url)?.[0] ?? '';
  const rest = url.slice(prefix.length);
  return { prefix, path: rest.startsWith('/') ? rest : `/${rest}` };
}

function forwarded(request: FastifyRequest, prefix: string, port: string): Record<string, string> {
  const previous = request.headers['x-forwarded-for'];
  const address = request.socket.remoteAddress ?? '';
  return {
    host: `localhost:${port}`,
    'x-forwarded-for': previous ? `${String(previous)}, ${address}` : address,
    'x-forwarded-host': request.headers.host ?? '',
    'x-forwarded-proto': (request.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http',
    'x-forwarded-prefix': prefix,
  };
}

export function registerSandboxPortRoutes(app: FastifyInstance, options: { sandboxes: SandboxService }): void {
  const service = options.sandboxes;

  async function open(request: FastifyRequest<{ Params: PortParams }>): Promise<{ stream: Duplex; release: () => void }> {
    return service.openPort(request.principal.tenant, request.params.id, Number(request.params.port));
  }

  /** An upgrade: the request head goes to the sandbox's server as it came, then both sockets are joined. */
  async function upgrade(request: FastifyRequest<{ Params: PortParams }>, reply: FastifyReply): Promise<void> {
    const { stream, release } = await open(request);
    reply.hijack();
    const client = request.raw.socket as Socket;
    const { prefix, path } = upstreamPath(request.raw.url ?? '/');
    const headers = { ...passOn(request.headers, ['authorization', 'host']), ...forwarded(request, prefix, request.params.port), connection: 'Upgrade', upgrade: String(request.headers.upgrade) };
    const lines = [`${request.method} ${path} HTTP/1.1`];
    for (const [name, value] of Object.entries(headers)) for (const one of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${one.replace(/[\r\n]/g, '')}`);
    stream.write(`${lines.join('\r\n')}\r\n\r\n`);
    const head = (request.raw as unknown as Record<symbol, Buffer | undefined>)[Object.getOwnPropertySymbols(request.raw).find((s) => s.description === 'ws-head')!];
    if (head !== undefined && head.length > 0) stream.write(head);
    const end = (): void => {
      release();
      client.destroy();
      stream.destroy();
    };
    client.on('error', end).on('close', end);
    stream.on('error', end).on('close', end);
    client.pipe(stream);
    stream.pipe(client);
  }

  void app.register(async (scope) => {
    // Any body, any type: streamed to the sandbox's server as it comes.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void) => done(null, payload));
    const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
    const binary = { content: { 'application/octet-stream': { schema: BinaryBodySchema } } };
    for (const url of ['/v1/sandboxes/:id/ports/:port', '/v1/sandboxes/:id/ports/:port/*']) {
      scope.route<{ Params: PortParams }>({
        method: [...METHODS],
        url,
        config: {
          swaggerTransform: ({ schema, url: path, route }) => {
            const method = String(route.method).toUpperCase();
            const withBody = method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS' && method !== 'DELETE';
            // The document names the rest of the path {path} (fastify's wildcard is "*").
            return { schema: { ...schema, params: DocParamsSchema, ...(withBody ? { body: binary } : {}) } as typeof schema, url: path.replace(/\*$/, ':path') };
          },
        },
        schema: {
          hide: url.endsWith(':port'),
          tags: ['sandboxes'],
          summary: 'Proxy a request (or a WebSocket upgrade) to a server listening on PORT inside the sandbox',
          description:
            'Any method, path and query after /ports/PORT, headers (except hop-by-hop ones and Authorization) and body pass on to 127.0.0.1:PORT inside the sandbox, streamed both ways; the answer is the sandbox server\'s own. Upgrades (WebSocket) are joined as raw bytes. The sandbox gets no network for it. 502 SANDBOX_PORT_UNREACHABLE: nothing listens there; 429 SANDBOX_PORT_LIMIT: too many connections open to this sandbox. A paused sandbox is resumed first. /v1/sandboxes/ID/ports/PORT without a path is the same as .../PORT/.',
          params: PortParamsSchema,
          response: { 200: { description: 'The answer of the sandbox\'s server (any status, headers and body)', ...binary }, ...errors },
        },
        preHandler: async (request, reply) => {
          if (request.headers.upgrade !== undefined && request.raw.socket !== undefined && request.raw.headers.connection?.toLowerCase().includes('upgrade')) await upgrade(request, reply);
        },
        handler: async (request, reply) => {
          const { stream, release } = await open(request);
          reply.hijack();
          const { prefix, path } = upstreamPath(request.raw.url ?? '/');
          const body = (request.body as IncomingMessage | undefined) ?? request.raw;
          const res = reply.raw;
          const upstream = httpRequest({
            method: request.method,
            path,
            headers: { ...passOn(request.headers, ['authorization', 'host']), ...forwarded(request, prefix, request.params.port), connection: 'close' },
            // No agent: this request's own connection, the sandbox's.
            createConnection: () => stream as Socket,
          });
          const fail = (): void => {
            release();
            stream.destroy();
            if (!res.headersSent) {
              const text = JSON.stringify({ error: { code: 'SANDBOX_PORT_UNREACHABLE', message: `the server on port ${request.params.port} of sandbox ${request.params.id} closed the connection without a valid answer` }, requestId: request.id });
              res.writeHead(502, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-request-id': request.id });
              res.end(text);
            } else {
              res.destroy();
            }
          };
          stream.on('error', () => {});
          upstream.on('error', fail);
          upstream.on('response', (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.statusMessage, { ...passOn(answer.headers), 'x-request-id': request.id, 'x-kindling-port': request.params.port });
            answer.pipe(res);
            answer.on('error', fail);
            answer.on('end', release);
          });
          // The client went away: the upstream connection (and its helper) goes too.
          res.on('close', () => {
            release();
            if (!res.writableFinished) stream.destroy();
            stream.destroy();
          });
          body.on('error', () => stream.destroy());
          body.pipe(upstream);
        },
      });
    }
  });
}
