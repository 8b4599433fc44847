import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { KindlingError } from '../core/errors.js';
import { DEFAULT_TENANT, type Principal, type TenantService } from '../orchestrator/tenants.js';

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
export const TENANT_HEADER = 'x-kindling-tenant';

/** The key of `Authorization: Bearer KEY`, or null. */
export function bearerToken(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
  return match?.[1] ?? null;
}

/**
 * Resolves the principal of a request from memory: the key's tenant (a map keyed by its sha256), or in open local mode
 * (no keys at all) the admin of `default`. An admin may act as another tenant with `x-kindling-tenant: NAME`.
 */
export function makeAuthenticator(tenants: Pick<TenantService, 'authEnabled' | 'authenticate' | 'exists'>): (request: FastifyRequest) => Principal {
  return (request) => {
    let principal: Principal;
    if (!tenants.authEnabled) {
      principal = { tenant: DEFAULT_TENANT, isAdmin: true, keyId: null };
    } else {
      const token = bearerToken(request);
      if (token === null) {
        throw new KindlingError('UNAUTHORIZED', 'this server needs an API key: send "Authorization: Bearer KEY" (the SDK and CLI take --api-key or KINDLING_API_KEY)');
      }
      const found = tenants.authenticate(token);
      if (found === null) throw new KindlingError('UNAUTHORIZED', 'the API key is not valid (unknown or revoked); check KINDLING_API_KEY');
      principal = found;
    }
    const asTenant = request.headers[TENANT_HEADER];
    if (typeof asTenant === 'string' && asTenant !== principal.tenant) {
      if (!principal.isAdmin) throw new KindlingError('FORBIDDEN', `only the admin key may act as another tenant (${TENANT_HEADER}); this key belongs to "${principal.tenant}"`);
      if (!tenants.exists(asTenant)) throw new KindlingError('TENANT_NOT_FOUND', `no tenant named "${asTenant.slice(0, 80)}" (${TENANT_HEADER}); see GET /v1/tenants`);
      principal = { ...principal, tenant: asTenant };
    }
    return principal;
  };
}

/** Checks a bearer token against a fixed secret in constant time (the metrics scrape token). */
export function matchesSecret(request: FastifyRequest, secret: string): boolean {
  const token = bearerToken(request);
  return token !== null && timingSafeEqual(digest(token), digest(secret));
}

/** Admin-only routes: 403 FORBIDDEN for a tenant key. */
export function requireAdmin(request: FastifyRequest): void {
  if (!request.principal.isAdmin) throw new KindlingError('FORBIDDEN', `this route needs the admin key; the key used belongs to tenant "${request.principal.tenant}"`);
}
