/**
 * The raw byte paths shared by POST /v1/execute (raw body / raw stdout) and POST /v1/functions/NAME/invoke (command
 * functions): how a request body becomes a program's stdin, and how a streamed stdout answer ends with the result in
 * HTTP trailers. Both routes hold no lifecycle of their own; these are the HTTP halves of the orchestrator's I/O plan.
 */
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { StdinPlan } from '../orchestrator/io-plan.js';
import { checkDeclaredLength, limitUpload, trailersAllowed } from './raw-body.js';
import type { StreamRelay } from './stream-relay.js';

/** The body limit of a request: the server's, or the tenant's quota maxPayloadBytes when that is lower. */
export function payloadLimit(request: FastifyRequest, serverMaxBytes: number, serverFlag: string): { maxBytes: number; flag: string } {
  const cap = request.scope.maxPayloadBytes;
  return cap !== undefined && cap < serverMaxBytes ? { maxBytes: cap, flag: "the tenant's quota maxPayloadBytes (ask an admin)" } : { maxBytes: serverMaxBytes, flag: serverFlag };
}

/** A request body on its way to a program's stdin. */
export interface StreamedUpload {
  stdin: StdinPlan;
  /** Why the upload broke off (over its limit, the client gone), or null. */
  error(): unknown;
  /** Bytes delivered to the program so far. */
  bytes(): number;
  /** Call when the execution is over: a body nothing read (the execution never started) is dropped, so the answer arrives. */
  release(): void;
}

/**
 * The body as a stdin plan, within the request's limit (a declared length over it is refused before a byte is read).
 * A large upload with a declared length bypasses node through the splice relay (see stream-relay.ts); anything else is
 * piped through a byte counter.
 */
export function streamUpload(request: FastifyRequest, reply: FastifyReply, upload: IncomingMessage | undefined, limit: { maxBytes: number; flag: string }, relay: StreamRelay | undefined): StreamedUpload {
  checkDeclaredLength(request.headers, limit.maxBytes, limit.flag);
  const throughNode = (): ReturnType<typeof limitUpload> | null => (upload ? limitUpload(upload, reply, limit.maxBytes, limit.flag) : null);
  const held = upload && relay ? relay.holdUpload(upload, reply.raw, () => throughNode()?.stream ?? Readable.from([])) : null;
  if (held) {
    return { stdin: { kind: 'pump', pump: (target) => held.pumpInto(target) }, error: () => held.error(), bytes: () => held.deliveredBytes, release: () => held.release() };
  }
  const limited = throughNode();
  return {
    stdin: { kind: 'stream', stream: limited?.stream ?? Readable.from([]) },
    error: () => limited?.error() ?? null,
    // Counted by the limiter itself: a 'data' listener here would start the flow before the sandbox reads it.
    bytes: () => limited?.stream.bytes ?? 0,
    release: () => undefined,
  };
}

/**
 * A streamed raw answer: 200 and the headers known now go out, the body follows as the program writes it, and the
 * result's fields come last as HTTP trailers. HTTP/1.0 has no chunked encoding, hence no trailers (node throws on the
 * header): there the body ends with the connection.
 */
export function beginStreamedAnswer(request: FastifyRequest, reply: FastifyReply, headers: Record<string, string>, trailerNames: readonly string[]): void {
  reply.hijack();
  reply.raw.writeHead(200, {
    ...headers,
    'x-request-id': request.id,
    ...(trailersAllowed(request) ? { trailer: trailerNames.join(', ') } : {}),
  });
}

/** Ends a streamed answer with the result's trailers (when the protocol allows them). */
export function endStreamedAnswer(request: FastifyRequest, reply: FastifyReply, trailers: Record<string, string>): void {
  if (trailersAllowed(request)) reply.raw.addTrailers(trailers);
  reply.raw.end();
}

/** The headers said 200 already: a broken response is the only honest answer left to a failure mid-stream. */
export function breakStreamedAnswer(reply: FastifyReply, error: unknown): void {
  reply.raw.destroy(error instanceof Error ? error : new Error(String(error)));
}
