import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError, storageFullError, type ErrorCode } from '../core/errors.js';

/** Fastify's own error codes, mapped to ours. */
const FASTIFY_CODES: Record<string, { code: ErrorCode; message?: string }> = {
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'INVALID_JSON', message: 'the request body is not valid JSON' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'INVALID_JSON', message: 'the request body is empty; send a JSON object' },
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'PAYLOAD_TOO_LARGE' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'UNSUPPORTED_MEDIA_TYPE', message: 'unsupported Content-Type; send application/json' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'VALIDATION_FAILED', message: 'Content-Length does not match the body' },
  FST_ERR_VALIDATION: { code: 'VALIDATION_FAILED' },
};

/** Fastify's validationContext, as a user names that part of the request. */
const VALIDATION_PARTS: Record<string, string> = { body: 'body', querystring: 'query', params: 'path', headers: 'headers' };

/**
 * The values an enum-like field takes (`enum`, or a union of constants, which ajv reports as one `const` failure per
 * branch): "must be equal to constant" alone does not say what to send. Undefined when the failure is of another kind.
 */
function allowedValues(errors: NonNullable<FastifyError['validation']>, instancePath: string): string[] | undefined {
  const atField = errors.filter((error) => error.instancePath === instancePath);
  const enumError = atField.find((error) => error.keyword === 'enum');
  if (enumError) return ((enumError.params as { allowedValues?: unknown[] }).allowedValues ?? []).map(String);
  const constants = atField.filter((error) => error.keyword === 'const').map((error) => String((error.params as { allowedValue?: unknown }).allowedValue));
  return constants.length > 0 ? [...new Set(constants)] : undefined;
}

/** Converts anything thrown into a KindlingError. Unexpected errors become INTERNAL and hide their details. */
export function toKindlingError(error: unknown, limits: { maxBodyBytes: number }): KindlingError {
  // A full disk (SQLite or a file write, also wrapped by an executor as its failure) is the operator's to fix, not a
  // bug: 507, retryable, never a 500.
  const full = storageFullError(error);
  if (full) return full;
  if (error instanceof KindlingError) return error;
  const fastifyError = error as FastifyError;
  if (fastifyError && typeof fastifyError.code === 'string') {
    const mapped = FASTIFY_CODES[fastifyError.code];
    if (mapped?.code === 'PAYLOAD_TOO_LARGE') {
      return new KindlingError('PAYLOAD_TOO_LARGE', `the request body is larger than this server's limit of ${limits.maxBodyBytes} bytes; send less or raise --max-body-bytes`);
    }
    if (mapped?.code === 'VALIDATION_FAILED' && fastifyError.validation) {
      const first = fastifyError.validation[0];
      // The whole object failing is named by where it came from: an unknown `?x=` is the query's, not the body's.
      const part = VALIDATION_PARTS[fastifyError.validationContext ?? 'body'] ?? 'body';
      const where = first?.instancePath ? first.instancePath.replace(/^\//, '').replace(/\//g, '.') : part;
      const allowed = allowedValues(fastifyError.validation, first?.instancePath ?? '');
      const extra = first?.keyword === 'additionalProperties'
        ? ` "${String((first.params as { additionalProperty?: string }).additionalProperty)}" is not a known field`
        : allowed ? ` must be one of ${allowed.join(', ')}` : ` ${first?.message ?? 'is invalid'}`;
      return new KindlingError('VALIDATION_FAILED', `${where}:${extra}; see GET /openapi.json for the schema`, { details: { field: where } });
    }
    if (mapped) return new KindlingError(mapped.code, mapped.message ?? fastifyError.message, { cause: error });
  }
  // Fastify reports a few body errors only by status code.
  if (fastifyError?.statusCode === 400 && error instanceof SyntaxError) {
    return new KindlingError('INVALID_JSON', `the request body is not valid JSON: ${error.message}`);
  }
  if (fastifyError?.statusCode === 413) return toKindlingError({ code: 'FST_ERR_CTP_BODY_TOO_LARGE' }, limits);
  if (fastifyError?.statusCode === 415) return toKindlingError({ code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE' }, limits);
  return new KindlingError('INTERNAL', 'an unexpected error occurred; the request id in this answer finds it in the server log', { cause: error });
}

export function errorBody(error: KindlingError, requestId: string): object {
  return {
    error: { code: error.code, message: error.message, ...(error.details ? { details: error.details } : {}) },
    requestId,
  };
}

/**
 * Retry-After for a 429 or 503 whose thrower named no time (docs/api.md promises the header on both): a second for a
 * busy server, five for one that is unavailable or shutting down (the times the orchestrator uses for those codes).
 */
const DEFAULT_RETRY_AFTER_SECONDS: Partial<Record<number, number>> = { 429: 1, 503: 5 };

export function sendError(reply: FastifyReply, request: FastifyRequest, error: KindlingError): FastifyReply {
  const retryAfterSeconds = error.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS[error.statusCode];
  if (retryAfterSeconds !== undefined) reply.header('retry-after', String(retryAfterSeconds));
  return reply.code(error.statusCode).type('application/json').send(errorBody(error, request.id));
}
