import { APIResource, call, sendDelete, type RequestOptions } from './resource.js';
import type { ApiKeyInfo, CreatedApiKey, CreatedTenant, TenantInfo, TenantQuotas, TenantSelf } from './types.js';

const tenantPath = (name: string): string => `/v1/tenants/${encodeURIComponent(name)}`;

/** Options of `tenants.create()`. */
export interface CreateTenantOptions extends RequestOptions {
  /** Quotas of the new tenant; absent fields take the server's defaults. */
  quotas?: TenantQuotas;
}

/**
 * `/v1/tenants` (admin key): create, list, change and delete tenants. A tenant key gets `PermissionDeniedError` (403)
 * here; `me()` works with any key.
 */
export class Tenants extends APIResource {
  /**
   * `POST /v1/tenants`: resolves with the tenant and its first API key (`apiKey`, shown only here). On a server in
   * open local mode (no keys yet) the admin key is made too and returned once as `adminKey`.
   */
  create(name: string, options: CreateTenantOptions = {}): Promise<CreatedTenant> {
    const { quotas, ...rest } = options;
    return this.http.json<CreatedTenant>({ method: 'POST', path: '/v1/tenants', body: { name, ...(quotas ? { quotas } : {}) }, ...call(rest) });
  }

  /** `GET /v1/tenants`. */
  async list(options: RequestOptions = {}): Promise<TenantInfo[]> {
    return (await this.http.json<{ tenants: TenantInfo[] }>({ method: 'GET', path: '/v1/tenants', ...call(options) })).tenants;
  }

  /** `GET /v1/tenants/NAME`; `NotFoundError` when there is none. */
  get(name: string, options: RequestOptions = {}): Promise<TenantInfo> {
    return this.http.json<TenantInfo>({ method: 'GET', path: tenantPath(name), ...call(options) });
  }

  /** `PATCH /v1/tenants/NAME`: merges quota fields; `null` puts one back to the server default. */
  update(name: string, quotas: { [K in keyof TenantQuotas]?: number | null }, options: RequestOptions = {}): Promise<TenantInfo> {
    return this.http.json<TenantInfo>({ method: 'PATCH', path: tenantPath(name), body: { quotas }, ...call(options) });
  }

  /** `DELETE /v1/tenants/NAME`: revokes its keys, removes its functions; the name is not reused. */
  delete(name: string, options: RequestOptions = {}): Promise<void> {
    return sendDelete(this.http, tenantPath(name), options);
  }

  /** `GET /v1/tenant`: the caller's own tenant, its quotas in effect and whether the key is the admin's. */
  me(options: RequestOptions = {}): Promise<TenantSelf> {
    return this.http.json<TenantSelf>({ method: 'GET', path: '/v1/tenant', ...call(options) });
  }
}

/** `/v1/tenants/NAME/keys` (admin key): make, list and revoke a tenant's API keys. */
export class Keys extends APIResource {
  /** `POST /v1/tenants/NAME/keys`: a new key, shown only in this answer (`apiKey`). */
  create(tenant: string, options: RequestOptions = {}): Promise<CreatedApiKey> {
    return this.http.json<CreatedApiKey>({ method: 'POST', path: `${tenantPath(tenant)}/keys`, ...call(options) });
  }

  /** `GET /v1/tenants/NAME/keys`: id, prefix, created, revoked — never the key. */
  async list(tenant: string, options: RequestOptions = {}): Promise<ApiKeyInfo[]> {
    return (await this.http.json<{ keys: ApiKeyInfo[] }>({ method: 'GET', path: `${tenantPath(tenant)}/keys`, ...call(options) })).keys;
  }

  /** `DELETE /v1/tenants/NAME/keys/ID`: the key stops working with the next request. */
  revoke(tenant: string, id: string, options: RequestOptions = {}): Promise<void> {
    return sendDelete(this.http, `${tenantPath(tenant)}/keys/${encodeURIComponent(id)}`, options);
  }
}
