import type { FastifyInstance, FastifyRequest } from 'fastify';
import { TENANT_HEADER } from '../auth.js';
import { KindlingError } from '../../core/errors.js';
import type { UsageGroupBy, UsageRecord, UsageRow, UsageStore } from '../../store/usage.js';
import { ErrorResponseSchema, UsageInvocationsSchema, UsageSchema, UsageTimeseriesSchema } from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const DAY_MS = 86_400_000;
const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;

/** `2026-11-01` (a UTC day) or any ISO 8601 time; `endOfDay` makes a plain date mean the end of that day. */
function parseTime(value: string | undefined, field: string, fallback: number, endOfDay: boolean): number {
  if (value === undefined || value === '') return fallback;
  const ms = Date.parse(DATE_ONLY.test(value) ? `${value}T00:00:00Z` : value);
  if (!Number.isFinite(ms)) {
    throw new KindlingError('VALIDATION_FAILED', `${field} must be a date (YYYY-MM-DD, UTC) or an ISO 8601 time, got "${value.slice(0, 40)}"`, { details: { field } });
  }
  return DATE_ONLY.test(value) && endOfDay ? ms + DAY_MS : ms;
}

function parseInteger(value: string | undefined, field: string, fallback: number, min: number, max: number): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new KindlingError('VALIDATION_FAILED', `${field} must be a whole number from ${min} to ${max}, got "${value.slice(0, 40)}"`, { details: { field } });
  }
  return n;
}

const csvCell = (value: string | number): string => {
  const text = String(value);
  // Quote what needs it, and defuse cells a spreadsheet would run as a formula.
  const safe = /^[=+\-@\t\r]/.test(text) && typeof value === 'string' ? `'${text}` : text;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
};

export function usageCsv(rows: UsageRow[], groupBy: UsageGroupBy): string {
  const lines = [['tenant', groupBy, 'invocations', 'cpuMs', 'gbSeconds', 'bytesIn', 'bytesOut', 'storageGbHours'].join(',')];
  for (const row of rows) lines.push([row.tenant, row.key, row.invocations, row.cpuMs, row.gbSeconds, row.bytesIn, row.bytesOut, row.storageGbHours].map(csvCell).join(','));
  return `${lines.join('\n')}\n`;
}

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export interface StatsBucket {
  startMs: number;
  invocations: number;
  errors: number;
  coldStarts: number;
  p50Ms: number | null;
  p95Ms: number | null;
  p99Ms: number | null;
}

/** Invocation rate, latency percentiles and cold starts per time bucket (the console's charts). */
export function bucketize(records: UsageRecord[], fromMs: number, toMs: number, bucketMs: number): StatsBucket[] {
  const count = Math.max(1, Math.ceil((toMs - fromMs) / bucketMs));
  const groups: UsageRecord[][] = Array.from({ length: count }, () => []);
  for (const record of records) {
    const index = Math.floor((record.atMs - fromMs) / bucketMs);
    if (index >= 0 && index < count) groups[index]!.push(record);
  }
  return groups.map((group, index) => {
    const durations = group.map((record) => record.durationMs).sort((a, b) => a - b);
    return {
      startMs: fromMs + index * bucketMs,
      invocations: group.length,
      errors: group.filter((record) => record.status !== 'succeeded').length,
      coldStarts: group.filter((record) => record.coldStart).length,
      p50Ms: percentile(durations, 50),
      p95Ms: percentile(durations, 95),
      p99Ms: percentile(durations, 99),
    };
  });
}

interface UsageQuerystring {
  from?: string;
  to?: string;
  groupBy?: string;
  tenant?: string;
}

/**
 * Whose usage a request sees: a tenant key its own tenant's only (asking for another answers 404, as for any other
 * tenant's name); the admin every tenant's, or one with `?tenant=` or `x-kindling-tenant`.
 */
function usageTenant(request: FastifyRequest, asked: string | undefined): string | undefined {
  const principal = request.principal;
  if (!principal.isAdmin) {
    if (asked !== undefined && asked !== principal.tenant) throw new KindlingError('TENANT_NOT_FOUND', `no tenant named "${asked.slice(0, 80)}"`);
    return principal.tenant;
  }
  if (asked !== undefined && asked !== '') return asked;
  return typeof request.headers[TENANT_HEADER] === 'string' ? principal.tenant : undefined;
}

export function registerUsageRoutes(app: FastifyInstance, options: { usage: Pick<UsageStore, 'summarize' | 'recent'>; now?: () => number }): void {
  const now = options.now ?? Date.now;
  const stringQuery = (names: string[]) => ({ type: 'object', properties: Object.fromEntries(names.map((name) => [name, { type: 'string' }])) });

  app.get<{ Querystring: UsageQuerystring }>(
    '/v1/usage',
    {
      schema: {
        tags: ['usage'],
        summary: 'Metered usage per tenant and function (or persistent sandbox) or day: invocations, CPU ms (cgroup), GB-seconds, stored GB-hours, bytes in/out',
        description:
          '`from`/`to`: UTC dates (YYYY-MM-DD, `to` inclusive) or ISO 8601 times; default the last 30 days. `groupBy`: function (default) or day. With `Accept: text/csv` the rows come as CSV. GB-seconds = memory limit in GB × wall time in s. Persistent sandboxes appear as rows keyed by their id (running time and CPU; disks and snapshots as storageGbHours).',
        querystring: stringQuery(['from', 'to', 'groupBy', 'tenant']),
        response: { 200: { description: 'Usage as JSON, or as CSV with Accept: text/csv', content: { 'application/json': { schema: UsageSchema }, 'text/csv': { schema: { type: 'string' } } } }, ...errors },
      },
    },
    async (request, reply) => {
      const groupBy = request.query.groupBy ?? 'function';
      if (groupBy !== 'function' && groupBy !== 'day') {
        throw new KindlingError('VALIDATION_FAILED', `groupBy must be "function" or "day", got "${groupBy.slice(0, 40)}"`, { details: { field: 'groupBy' } });
      }
      const toMs = parseTime(request.query.to, 'to', now() + 1, true);
      const fromMs = parseTime(request.query.from, 'from', Math.floor(now() / DAY_MS) * DAY_MS - 29 * DAY_MS, false);
      if (fromMs >= toMs) throw new KindlingError('VALIDATION_FAILED', '"from" must be before "to"', { details: { field: 'from' } });
      const tenant = usageTenant(request, request.query.tenant);
      const rows = options.usage.summarize({ fromMs, toMs, groupBy, ...(tenant === undefined ? {} : { tenant }) });
      if ((request.headers.accept ?? '').includes('text/csv')) {
        reply.type('text/csv; charset=utf-8');
        reply.header('content-disposition', `attachment; filename="kindling-usage-${groupBy}.csv"`);
        return usageCsv(rows, groupBy);
      }
      const totals = rows.reduce(
        (sum, row) => ({ invocations: sum.invocations + row.invocations, cpuMs: sum.cpuMs + row.cpuMs, gbSeconds: sum.gbSeconds + row.gbSeconds, storageGbHours: sum.storageGbHours + row.storageGbHours, bytesIn: sum.bytesIn + row.bytesIn, bytesOut: sum.bytesOut + row.bytesOut }),
        { invocations: 0, cpuMs: 0, gbSeconds: 0, storageGbHours: 0, bytesIn: 0, bytesOut: 0 },
      );
      reply.type('application/json');
      return {
        from: new Date(fromMs).toISOString(),
        to: new Date(toMs).toISOString(),
        groupBy,
        rows: rows.map(({ key, ...rest }) => ({ ...rest, [groupBy]: key })),
        totals,
      };
    },
  );

  app.get<{ Querystring: { limit?: string; tenant?: string } }>(
    '/v1/usage/invocations',
    {
      schema: {
        tags: ['usage'],
        summary: 'The newest metered invocations (id, function, status, duration, cold start, executor, CPU ms, trace id)',
        querystring: stringQuery(['limit', 'tenant']),
        response: { 200: UsageInvocationsSchema, ...errors },
      },
    },
    async (request) => {
      const tenant = usageTenant(request, request.query.tenant);
      return { invocations: options.usage.recent({ limit: parseInteger(request.query.limit, 'limit', 50, 1, 1000), ...(tenant === undefined ? {} : { tenant }) }) };
    },
  );

  app.get<{ Querystring: { minutes?: string; bucketSeconds?: string; tenant?: string } }>(
    '/v1/usage/timeseries',
    {
      schema: {
        tags: ['usage'],
        summary: 'Invocations, errors, cold starts and latency percentiles per time bucket (for charts)',
        querystring: stringQuery(['minutes', 'bucketSeconds', 'tenant']),
        response: { 200: UsageTimeseriesSchema, ...errors },
      },
    },
    async (request) => {
      const minutes = parseInteger(request.query.minutes, 'minutes', 30, 1, 1440);
      const bucketMs = parseInteger(request.query.bucketSeconds, 'bucketSeconds', 60, 1, 3600) * 1000;
      const toMs = Math.ceil(now() / bucketMs) * bucketMs;
      const fromMs = toMs - Math.ceil((minutes * 60_000) / bucketMs) * bucketMs;
      const tenant = usageTenant(request, request.query.tenant);
      const records = options.usage.recent({ limit: 20_000, sinceMs: fromMs, ...(tenant === undefined ? {} : { tenant }) });
      return { fromMs, toMs, bucketMs, buckets: bucketize(records, fromMs, toMs, bucketMs) };
    },
  );
}
