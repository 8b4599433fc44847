import type { FastifyInstance } from 'fastify';
import type { TenantService } from '../../orchestrator/tenants.js';
import { requireAdmin } from '../auth.js';
import {
  ApiKeyViewSchema,
  CreatedApiKeySchema,
  CreatedTenantSchema,
  TenantSelfSchema,
  TenantViewSchema,
  CreateTenantSchema,
  ErrorResponseSchema,
  TenantNameParamsSchema,
  UpdateTenantSchema,
  type CreateTenantBody,
  type TenantNameParams,
  type UpdateTenantBody,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const KeyParamsSchema = { type: 'object', properties: { name: { type: 'string', maxLength: 256 }, id: { type: 'string', maxLength: 128 } }, required: ['name', 'id'] } as const;

/** What the tenant routes use of the tenant service (tests pass a small fake). */
export type TenantRouteTenants = Pick<TenantService, 'create' | 'list' | 'get' | 'update' | 'delete' | 'createKey' | 'listKeys' | 'revokeKey' | 'running' | 'authEnabled'>;

/** Admin routes for tenants and their keys, and GET /v1/tenant for any key to see its own tenant and quotas. */
export function registerTenantRoutes(app: FastifyInstance, options: { tenants: TenantRouteTenants }): void {
  const tenants = options.tenants;

  app.post<{ Body: CreateTenantBody }>(
    '/v1/tenants',
    {
      schema: {
        tags: ['tenants'],
        summary: 'Create a tenant (admin): 201 {name, apiKey, keyId, quotas, effectiveQuotas} — the key is shown only here',
        description: 'In open local mode (loopback, no keys yet) the first tenant creation also makes the admin key and returns it once as `adminKey`; from then on every /v1 request needs a key.',
        body: CreateTenantSchema,
        response: { 201: CreatedTenantSchema, ...errors },
      },
    },
    async (request, reply) => {
      requireAdmin(request);
      const made = await tenants.create(request.body.name, request.body.quotas ?? {});
      reply.code(201);
      return { ...made.tenant, apiKey: made.apiKey, keyId: made.keyId, ...(made.adminKey ? { adminKey: made.adminKey } : {}) };
    },
  );

  app.get('/v1/tenants', { schema: { tags: ['tenants'], summary: 'List tenants with their quotas (admin)', response: { 200: { type: 'object', properties: { tenants: { type: 'array', items: TenantViewSchema } } }, ...errors } } }, async (request) => {
    requireAdmin(request);
    return { tenants: tenants.list() };
  });

  app.get<{ Params: TenantNameParams }>(
    '/v1/tenants/:name',
    { schema: { tags: ['tenants'], summary: 'A tenant and its quotas (admin)', params: TenantNameParamsSchema, response: { 200: TenantViewSchema, ...errors } } },
    async (request) => {
      requireAdmin(request);
      return tenants.get(request.params.name);
    },
  );

  app.patch<{ Params: TenantNameParams; Body: UpdateTenantBody }>(
    '/v1/tenants/:name',
    { schema: { tags: ['tenants'], summary: "Change a tenant's quotas (admin): fields merge, null goes back to the server default", params: TenantNameParamsSchema, body: UpdateTenantSchema, response: { 200: TenantViewSchema, ...errors } } },
    async (request) => {
      requireAdmin(request);
      return await tenants.update(request.params.name, request.body.quotas);
    },
  );

  app.delete<{ Params: TenantNameParams }>(
    '/v1/tenants/:name',
    { schema: { tags: ['tenants'], summary: 'Delete a tenant (admin): its keys are revoked, its functions and warm sandboxes go; the name is not reused', params: TenantNameParamsSchema, response: { 204: { type: 'null' }, ...errors } } },
    async (request, reply) => {
      requireAdmin(request);
      await tenants.delete(request.params.name);
      reply.code(204);
      return null;
    },
  );

  app.post<{ Params: TenantNameParams }>(
    '/v1/tenants/:name/keys',
    { schema: { tags: ['tenants'], summary: 'A new API key for a tenant (admin): 201 {id, prefix, apiKey, ...} — the key is shown only here', params: TenantNameParamsSchema, response: { 201: CreatedApiKeySchema, ...errors } } },
    async (request, reply) => {
      requireAdmin(request);
      const { key, apiKey } = await tenants.createKey(request.params.name);
      reply.code(201);
      return { ...key, apiKey };
    },
  );

  app.get<{ Params: TenantNameParams }>(
    '/v1/tenants/:name/keys',
    { schema: { tags: ['tenants'], summary: "A tenant's keys (admin): id, prefix, created, revoked — never the key", params: TenantNameParamsSchema, response: { 200: { type: 'object', properties: { keys: { type: 'array', items: ApiKeyViewSchema } } }, ...errors } } },
    async (request) => {
      requireAdmin(request);
      return { keys: tenants.listKeys(request.params.name) };
    },
  );

  app.delete<{ Params: { name: string; id: string } }>(
    '/v1/tenants/:name/keys/:id',
    { schema: { tags: ['tenants'], summary: 'Revoke a key (admin); effective for the very next request', params: KeyParamsSchema, response: { 204: { type: 'null' }, ...errors } } },
    async (request, reply) => {
      requireAdmin(request);
      await tenants.revokeKey(request.params.name, request.params.id);
      reply.code(204);
      return null;
    },
  );

  app.get('/v1/tenant', { schema: { tags: ['tenants'], summary: "The caller's own tenant: name, quotas in effect, running executions, whether the key is the admin's", response: { 200: TenantSelfSchema, ...errors } } }, async (request) => {
    const principal = request.principal;
    return { ...tenants.get(principal.tenant), admin: principal.isAdmin, keyId: principal.keyId, running: tenants.running(principal.tenant), authEnabled: tenants.authEnabled };
  });
}
