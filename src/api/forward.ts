/**
 * Forwarding a read to another gateway of the cluster: the request goes on with the caller's own credentials (the
 * other gateway checks them: keys are shared), and its answer (status, type, Kindling headers, body, also a stream of
 * server-sent events) comes back as it flows. The header FORWARDED_BY marks it, so it is never forwarded again.
 */
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';

export const FORWARDED_BY = 'x-kindling-forwarded-by';
/** What of the other gateway's answer the caller gets: its type and Kindling's own headers. */
const KEPT_HEADERS = /^(content-type|cache-control|retry-after|x-kindling-.+)$/i;

/** Whether this request was forwarded here by another gateway (then it is answered here, whatever the answer). */
export const wasForwarded = (request: FastifyRequest): boolean => request.headers[FORWARDED_BY] !== undefined;

export async function forwardRead(request: FastifyRequest, reply: FastifyReply, owner: { url: string; nodeId: string }, fromNode: string): Promise<FastifyReply> {
  const controller = new AbortController();
  // The caller went away (or the answer ended): the request to the other gateway goes too.
  reply.raw.once('close', () => controller.abort());
  const headers: Record<string, string> = { [FORWARDED_BY]: fromNode, 'x-request-id': request.id };
  for (const name of ['authorization', 'accept', 'last-event-id']) {
    const value = request.headers[name];
    if (typeof value === 'string') headers[name] = value;
  }
  const response = await fetch(new URL(request.url, owner.url), { method: 'GET', headers, signal: controller.signal, redirect: 'manual' });
  reply.code(response.status);
  for (const [name, value] of response.headers) if (KEPT_HEADERS.test(name)) reply.header(name, value);
  // Which gateway holds the invocation (its records are read there).
  reply.header('x-kindling-answered-by', owner.nodeId);
  return reply.send(response.body === null ? '' : Readable.fromWeb(response.body as import('node:stream/web').ReadableStream<Uint8Array>));
}
