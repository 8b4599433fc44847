import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { KindlingError } from '../core/errors.js';

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

/** Checks `Authorization: Bearer KEY` against the configured keys in constant time. No keys: auth is off. */
export function makeAuthenticator(keys: string[]): (request: FastifyRequest) => void {
  const digests = keys.map(digest);
  return (request) => {
    if (digests.length === 0) return;
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (!match?.[1]) {
      throw new KindlingError('UNAUTHORIZED', 'this server needs an API key: send "Authorization: Bearer KEY" (the SDK and CLI take --api-key or KINDLING_API_KEY)');
    }
    const presented = digest(match[1]);
    if (!digests.some((known) => timingSafeEqual(known, presented))) {
      throw new KindlingError('UNAUTHORIZED', 'the API key is not valid; check KINDLING_API_KEY');
    }
  };
}
