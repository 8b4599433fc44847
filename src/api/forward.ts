/**
 * Forwarding a read to another gateway of the cluster: the request goes on with the caller's own credentials (the
 * other gateway checks them: keys are shared), and its answer (status, type, Kindling headers, body, also a stream of
 * server-sent events) comes back as it flows. The header FORWARDED_BY marks it, so it is never forwarded again.
 */
import { Readable } from 'node:stream';
import type { ReadableStream } from 'node:stream/web';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError } from '../core/errors.js';

export const FORWARDED_BY = 'x-kindling-forwarded-by';
/** What of the other gateway's answer the caller gets: its type and Kindling's own headers. */
const KEPT_HEADERS = /^(content-type|cache-control|retry-after|x-kindling-.+)$/i;
/** Headers of the caller's request that go along (its credentials, what it accepts, the tenant an admin acts as). */
const PASSED_HEADERS = ['authorization', 'accept', 'last-event-id', 'x-kindling-tenant'];
/** The other gateway must start answering within this long (an answer that streams may then last). */
const ANSWER_TIMEOUT_MS = 10_000;

/** Whether this request was forwarded here by another gateway (then it is answered here, whatever the answer). */
export const wasForwarded = (request: FastifyRequest): boolean => request.headers[FORWARDED_BY] !== undefined;

/**
 * Forwards the read `path` (built by the caller from checked parts, never the raw request target, which may be an
 * absolute URL naming any host) to `owner`. Its failure to answer is a 503 CLUSTER_UNAVAILABLE naming it.
 */
export async function forwardRead(request: FastifyRequest, reply: FastifyReply, owner: { url: string; nodeId: string }, path: string, fromNode: string): Promise<FastifyReply> {
  const base = new URL(owner.url);
  const target = new URL(path, base);
  if (target.origin !== base.origin || !path.startsWith('/v1/')) throw new Error(`refusing to forward to ${target.href}`);
  const controller = new AbortController();
  // The caller went away (or the answer ended): the request to the other gateway goes too.
  reply.raw.once('close', () => controller.abort());
  const headers: Record<string, string> = { [FORWARDED_BY]: fromNode, 'x-request-id': request.id };
  for (const name of PASSED_HEADERS) {
    const value = request.headers[name];
    if (typeof value === 'string') headers[name] = value;
  }
  const timer = setTimeout(() => controller.abort(), ANSWER_TIMEOUT_MS);
  let response: Response;
  try {
    response = await fetch(target, { method: 'GET', headers, signal: controller.signal, redirect: 'manual' });
  } catch (error) {
    throw new KindlingError('CLUSTER_UNAVAILABLE', `the invocation is held by gateway ${owner.nodeId}, which did not answer (${error instanceof Error ? error.message : String(error)}); retry shortly`, { retryAfterSeconds: 1 });
  } finally {
    clearTimeout(timer);
  }
  reply.code(response.status);
  for (const [name, value] of response.headers) if (KEPT_HEADERS.test(name)) reply.header(name, value);
  // Which gateway holds the invocation (its records are read there).
  reply.header('x-kindling-answered-by', owner.nodeId);
  return reply.send(response.body === null ? '' : Readable.fromWeb(response.body as ReadableStream<Uint8Array>));
}
