/**
 * The spec of an upload whose body is an archive (a function bundle, a custom image's files): JSON in a request
 * header, checked against the same schema as the JSON body of that route.
 */
import type { Static, TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { KindlingError } from '../core/errors.js';

/** Parses and checks the header `name` (its value `value`); `missing` says what to send when it is absent. */
export function parseSpecHeader<T extends TSchema>(value: string | string[] | undefined, schema: T, name: string, missing: string): Static<T> {
  if (typeof value !== 'string' || value.trim() === '') throw new KindlingError('VALIDATION_FAILED', missing, { details: { field: name } });
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new KindlingError('INVALID_JSON', `the ${name} header is not valid JSON; send the spec as one line of JSON`, { details: { field: name } });
  }
  const first = Value.Errors(schema, parsed).First();
  if (first !== undefined) {
    const field = `${name}${first.path.replace(/\//g, '.')}`;
    throw new KindlingError('VALIDATION_FAILED', `${field}: ${first.message}`, { details: { field } });
  }
  return parsed as Static<T>;
}
