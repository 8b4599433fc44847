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
 * A browser cannot set Authorization on a WebSocket, and a key in the URL ends up in access logs and browser history.
 * So the console offers the key as a WebSocket subprotocol, `kindling.key.BASE64URL(KEY)`, next to a real one (the
 * server answers with that one: see `selectWebSocketProtocol`), as Kubernetes does for its bearer tokens.
 */
export const KEY_PROTOCOL_PREFIX = 'kindling.key.';
/** Longest subprotocol header read for a key (a key is far shorter); a longer one is not parsed. */
const MAX_PROTOCOL_HEADER_CHARS = 4096;

/** The key offered as a `kindling.key.` subprotocol of a WebSocket upgrade, or null. */
export function protocolKey(request: FastifyRequest): string | null {
  const upgrade = request.headers.upgrade;
  const header = request.headers['sec-websocket-protocol'];
  if (typeof upgrade !== 'string' || upgrade.toLowerCase() !== 'websocket' || typeof header !== 'string' || header.length > MAX_PROTOCOL_HEADER_CHARS) return null;
  for (const entry of header.split(',')) {
    const protocol = entry.trim();
    if (protocol.startsWith(KEY_PROTOCOL_PREFIX)) {
      const key = Buffer.from(protocol.slice(KEY_PROTOCOL_PREFIX.length), 'base64url').toString('utf8');
      return key.length > 0 ? key : null;
    }
  }
  return null;
}

/** The subprotocol a WebSocket answers with: the first one offered that is not a key (a key is never echoed back). */
export function selectWebSocketProtocol(protocols: Set<string>): string | false {
  for (const protocol of protocols) if (!protocol.startsWith(KEY_PROTOCOL_PREFIX)) return protocol;
  return false;
}

/**
 * Resolves the principal of a request from memory: the key's tenant (a map keyed by its sha256), or in open local mode
 * (no keys at all) the admin of `default`. An admin may act as another tenant with `x-kindling-tenant: NAME`.
 * `keyProtocolRoutes`: the WebSocket routes that also take the key as a subprotocol (`protocolKey`). Only routes that
 * end at the server: a proxied upgrade (ports) passes its subprotocols on to the sandbox, which must never see a key.
 */
export function makeAuthenticator(
  tenants: Pick<TenantService, 'authEnabled' | 'authenticate' | 'exists'>,
  keyProtocolRoutes: ReadonlySet<string> = new Set(),
): (request: FastifyRequest) => Principal {
  return (request) => {
    let principal: Principal;
    if (!tenants.authEnabled) {
      principal = { tenant: DEFAULT_TENANT, isAdmin: true, keyId: null };
    } else {
      const route = request.routeOptions.url;
      const token = bearerToken(request) ?? (route !== undefined && keyProtocolRoutes.has(route) ? protocolKey(request) : null);
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
