/**
 * Examples in /openapi.json: every JSON request body and answer of the document gets one, so that a reader (and a
 * generated client's docs) sees a concrete value next to each schema. A schema that carries its own `examples` keeps
 * them (written for the routes people read first: execute, functions, errors); every other media type gets one derived
 * from its schema: a field's own example, default or first enum value, else a plain value of its type and format.
 * A test validates every example against its schema, so none can drift from what the server accepts or answers.
 */

type JsonSchema = {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  example?: unknown;
  examples?: unknown[];
  format?: string;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  additionalProperties?: boolean | JsonSchema;
  minimum?: number;
  minItems?: number;
  minLength?: number;
  nullable?: boolean;
};

/** The deepest nesting an example is derived to (the API's schemas are shallow; this only bounds a recursive one). */
const MAX_DEPTH = 8;

/** A value that matches `schema`, from its own examples where it has them. */
export function exampleOf(schema: JsonSchema, depth = 0): unknown {
  if (schema.example !== undefined) return schema.example;
  if (schema.examples !== undefined && schema.examples.length > 0) return schema.examples[0];
  if (schema.const !== undefined) return schema.const;
  if (schema.default !== undefined) return schema.default;
  if (schema.enum !== undefined && schema.enum.length > 0) return schema.enum[0];
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (alternatives !== undefined && alternatives.length > 0) {
    // The first alternative that is not null: an example shows the useful case.
    const useful = alternatives.find((alternative) => alternative.type !== 'null') ?? alternatives[0]!;
    return exampleOf(useful, depth + 1);
  }
  if (schema.allOf !== undefined && schema.allOf.length > 0) return exampleOf(schema.allOf[0]!, depth + 1);
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== 'null') : schema.type;
  if (depth >= MAX_DEPTH) return type === 'array' ? [] : type === 'object' ? {} : null;
  switch (type) {
    case 'object':
    case undefined: {
      if (schema.properties === undefined) return {};
      const value: Record<string, unknown> = {};
      for (const [name, property] of Object.entries(schema.properties)) value[name] = exampleOf(property, depth + 1);
      return value;
    }
    case 'array':
      return schema.items === undefined ? [] : Array.from({ length: Math.max(1, schema.minItems ?? 1) }, () => exampleOf(schema.items!, depth + 1));
    case 'string':
      if (schema.format === 'date-time') return '2026-12-02T00:00:00.000Z';
      if (schema.format === 'uri') return 'https://example.com/';
      return 'x'.repeat(Math.max(1, schema.minLength ?? 1));
    case 'integer':
      return Math.max(0, Math.ceil(schema.minimum ?? 0));
    case 'number':
      return Math.max(0, schema.minimum ?? 0);
    case 'boolean':
      return false;
    case 'null':
      return null;
    default:
      return null;
  }
}

type Media = { schema?: JsonSchema; example?: unknown; examples?: unknown };
type Operation = { requestBody?: { content?: Record<string, Media> }; responses?: Record<string, { content?: Record<string, Media> }> };

/** Adds an example to every JSON media type of the document that has none (see the file comment). */
export function addExamples<T>(document: T): T {
  const paths = (document as { paths?: Record<string, Record<string, Operation>> }).paths ?? {};
  for (const operations of Object.values(paths)) {
    for (const operation of Object.values(operations)) {
      const medias = [
        ...Object.entries(operation.requestBody?.content ?? {}),
        ...Object.values(operation.responses ?? {}).flatMap((response) => Object.entries(response.content ?? {})),
      ];
      for (const [type, media] of medias) {
        if (!type.includes('json') || media.schema === undefined || media.example !== undefined || media.examples !== undefined) continue;
        media.example = exampleOf(media.schema);
      }
    }
  }
  return document;
}
