/**
 * The API contract: GET /openapi.json is a valid OpenAPI 3 document (checked by a real validator), every route in it
 * documents its request, success and error answers, both SDKs cover every route (or say why not) and map every error
 * code of the registry, and a client generated from the document by openapi-typescript + openapi-fetch compiles and
 * runs an execution against the server.
 */
import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv } from 'ajv';
import openapiTS, { astToString } from 'openapi-typescript';
import ts from 'typescript';
import { Kindling, KindlingError } from '@kindling/sdk';
import { ERROR_CODES } from '../src/core/errors.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

type Operation = { requestBody?: { content?: Record<string, unknown> }; responses?: Record<string, { content?: Record<string, { schema?: unknown }> }> };
type Document = { openapi: string; paths: Record<string, Record<string, Operation>> };

/** Route ("METHOD /path" as in the document) -> the TypeScript SDK methods that call it (paths on a client). */
const TS_COVERED: Record<string, string[]> = {
  'GET /healthz': ['health'],
  'GET /readyz': ['ready'],
  'GET /v1/cluster': ['cluster'],
  'POST /v1/execute': ['execute', 'run', 'runCommand', 'stream'],
  'GET /v1/execute/ws': ['interactive'],
  'PUT /v1/functions/{name}': ['functions.deploy'],
  'GET /v1/functions/{name}': ['functions.get'],
  'DELETE /v1/functions/{name}': ['functions.delete'],
  'GET /v1/functions': ['functions.list'],
  'POST /v1/functions/{name}/invoke': ['functions.invoke', 'functions.invokeAsync'],
  'GET /v1/functions/{name}/logs': ['functions.logs'],
  'GET /v1/functions/{name}/versions': ['functions.versions'],
  'GET /v1/functions/{name}/builds': ['functions.builds'],
  'GET /v1/functions/{name}/builds/{id}': ['functions.build'],
  'GET /v1/functions/{name}/builds/{id}/logs': ['functions.buildLogs', 'functions.followBuildLog'],
  'GET /v1/invocations': ['invocations.list'],
  'GET /v1/invocations/{id}': ['invocations.get', 'invocations.waitFor'],
  'GET /v1/invocations/{id}/output': ['invocations.output'],
  'GET /v1/invocations/{id}/logs': ['invocations.logs'],
  'PUT /v1/images/{name}': ['images.create'],
  'GET /v1/images': ['images.list'],
  'GET /v1/images/{name}': ['images.get', 'images.waitReady'],
  'DELETE /v1/images/{name}': ['images.delete'],
  'POST /v1/tenants': ['tenants.create'],
  'GET /v1/tenants': ['tenants.list'],
  'GET /v1/tenants/{name}': ['tenants.get'],
  'PATCH /v1/tenants/{name}': ['tenants.update'],
  'DELETE /v1/tenants/{name}': ['tenants.delete'],
  'GET /v1/tenant': ['tenants.me'],
  'POST /v1/tenants/{name}/keys': ['keys.create'],
  'GET /v1/tenants/{name}/keys': ['keys.list'],
  'DELETE /v1/tenants/{name}/keys/{id}': ['keys.revoke'],
  'POST /v1/sandboxes': ['sandboxes.create'],
  'GET /v1/sandboxes': ['sandboxes.list'],
  'GET /v1/sandboxes/{id}': ['sandboxes.get', 'sandboxes.connect'],
  'DELETE /v1/sandboxes/{id}': ['sandboxes.delete'],
  'POST /v1/sandboxes/{id}/pause': ['sandboxes.pause'],
  'POST /v1/sandboxes/{id}/resume': ['sandboxes.resume'],
  'POST /v1/sandboxes/{id}/commands': ['sandboxes.run', 'sandboxes.start'],
  'GET /v1/sandboxes/{id}/commands': ['sandboxes.listCommands'],
  'GET /v1/sandboxes/{id}/commands/{cid}': ['sandboxes.getCommand'],
  'DELETE /v1/sandboxes/{id}/commands/{cid}': ['sandboxes.killCommand'],
  'GET /v1/sandboxes/{id}/commands/{cid}/logs': ['sandboxes.commandLogs'],
  'GET /v1/sandboxes/{id}/pty': ['sandboxes.pty'],
  'PUT /v1/sandboxes/{id}/files': ['sandboxes.writeFile'],
  'GET /v1/sandboxes/{id}/files': ['sandboxes.readFile'],
  'DELETE /v1/sandboxes/{id}/files': ['sandboxes.removeFile'],
  'POST /v1/sandboxes/{id}/snapshots': ['sandboxes.snapshot'],
  'GET /v1/sandboxes/{id}/snapshots': ['sandboxes.listSnapshots'],
  'POST /v1/sandboxes/{id}/fork': ['sandboxes.fork'],
  'GET /v1/snapshots': ['sandboxes.listSnapshots'],
  'GET /v1/snapshots/{id}': ['sandboxes.getSnapshot'],
  'DELETE /v1/snapshots/{id}': ['sandboxes.deleteSnapshot'],
  'GET /v1/sandboxes/{id}/files/list': ['sandboxes.listFiles'],
  'PATCH /v1/sandboxes/{id}': ['sandboxes.update', 'sandboxes.setTimeout'],
  'POST /v1/sandboxes/{id}/hibernate': ['sandboxes.hibernate'],
  'POST /v1/sandboxes/{id}/files/mkdir': ['sandboxes.mkdir'],
  'GET /v1/sandboxes/{id}/files/tar': ['sandboxes.readTar'],
  'PUT /v1/sandboxes/{id}/files/tar': ['sandboxes.writeTar'],
  ...Object.fromEntries(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].map((method) => [`${method} /v1/sandboxes/{id}/ports/{port}/{path}`, ['sandboxes.fetchPort', 'sandboxes.portUrl']])),
};
/** Routes the TypeScript SDK leaves out on purpose, and why. */
const TS_NOT_COVERED: Record<string, string> = {
  'GET /v1/usage': 'usage is read in the console and with the CLI (kindling usage); the Python SDK has it',
  'GET /v1/usage/invocations': 'the console\'s table; the Python SDK has it',
  'GET /v1/usage/timeseries': 'the console\'s charts; the Python SDK has it',
  'GET /v1/pools': 'operator view of warm pools; the Python SDK has it',
};

const unavailable = await sandboxUnavailableReason();
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

describe('the OpenAPI contract', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let document: Document;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
    const response = await fetch(`${server.url}/openapi.json`);
    assert.equal(response.status, 200);
    document = (await response.json()) as Document;
  });
  after(async () => {
    await server?.stop();
  });

  const operations = (): [string, Operation][] =>
    Object.entries(document.paths).flatMap(([path, ops]) => Object.entries(ops).map(([method, op]) => [`${method.toUpperCase()} ${path}`, op] as [string, Operation]));

  test('is a valid OpenAPI 3 document (@seriousme/openapi-schema-validator)', async () => {
    const result = await new Validator().validate(document as unknown as Record<string, unknown>);
    assert.equal(result.valid, true, JSON.stringify(result.errors, null, 2)?.slice(0, 2000));
    // The validator is not a rubber stamp: a broken document fails.
    const broken = structuredClone(document) as unknown as { paths: Record<string, Record<string, { responses?: unknown }>> };
    broken.paths['/healthz']!.get!.responses = 'none';
    assert.equal((await new Validator().validate(broken as unknown as Record<string, unknown>)).valid, false);
  });

  test('every route documents its success answer with a schema, and its errors', () => {
    const problems: string[] = [];
    for (const [route, op] of operations()) {
      const responses = op.responses ?? {};
      const success = Object.entries(responses).filter(([status]) => /^(1|2)\d\d$/.test(status));
      if (success.length === 0) problems.push(`${route}: no 1xx/2xx answer`);
      for (const [status, answer] of success) {
        if (status === '204' || status === '101') continue;
        if (!answer.content || Object.values(answer.content).some((media) => media.schema === undefined)) problems.push(`${route}: ${status} has no schema`);
      }
      const publicRoute = route === 'GET /healthz' || route === 'GET /readyz';
      if (!publicRoute && route !== 'GET /v1/execute/ws' && (!responses['4XX'] || !responses['5XX'])) problems.push(`${route}: no 4XX/5XX error schema`);
      if (/^(POST|PUT|PATCH) /.test(route) && !route.endsWith('/keys') && !op.requestBody) problems.push(`${route}: no request body`);
    }
    assert.deepEqual(problems, []);
  });

  test('every JSON body and answer has an example, and every example is valid against its schema', () => {
    // The document's schemas are OpenAPI 3.0 (nullable, example): Ajv reads them with those keywords known.
    const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
    const problems: string[] = [];
    let checked = 0;
    for (const [route, op] of operations()) {
      const medias: [string, { schema?: unknown; example?: unknown; examples?: Record<string, { value: unknown }> }][] = [
        ...Object.entries(op.requestBody?.content ?? {}).map(([type, media]) => [`${route} request ${type}`, media] as [string, never]),
        ...Object.entries(op.responses ?? {}).flatMap(([status, answer]) => Object.entries(answer.content ?? {}).map(([type, media]) => [`${route} ${status} ${type}`, media] as [string, never])),
      ];
      for (const [where, media] of medias) {
        if (!where.includes('json') || media.schema === undefined) continue;
        const examples = media.example !== undefined ? [media.example] : Object.values(media.examples ?? {}).map((entry) => entry.value);
        if (examples.length === 0) {
          problems.push(`${where}: no example`);
          continue;
        }
        const validate = ajv.compile(media.schema as object);
        for (const example of examples) {
          checked++;
          if (!validate(example)) problems.push(`${where}: example ${JSON.stringify(example).slice(0, 200)} is invalid: ${ajv.errorsText(validate.errors)}`);
        }
      }
    }
    assert.deepEqual(problems, []);
    assert.ok(checked > 40, `${checked} examples checked`);
    // The hand-written ones are there (the rest are derived from the schemas).
    const execute = document.paths['/v1/execute']!.post!;
    assert.deepEqual((execute.requestBody!.content!['application/json'] as { example?: unknown }).example, { runtime: 'python', code: 'print(sum(range(10)))', timeoutMs: 5000 });
  });

  test('every route is in the reference (docs/api.md)', async () => {
    const { readFile } = await import('node:fs/promises');
    const api = await readFile(join(repoRoot, 'docs', 'api.md'), 'utf8');
    // The reference writes path parameters in capitals (/v1/functions/NAME) and may name several methods in one row.
    const missing = [...new Set(Object.keys(document.paths))]
      .map((path) => path.replace(/\{(\w+)\}/g, (_, name: string) => name.toUpperCase()))
      .filter((path) => !api.includes(`${path}\``) && !api.includes(`${path}?`) && !api.includes(`${path} `));
    assert.deepEqual(missing, [], 'routes of /openapi.json missing from docs/api.md');
  });

  test('every route is covered by the TypeScript SDK or listed as not covered', () => {
    const client = new Kindling({ url: server.url }) as unknown as Record<string, unknown>;
    for (const [route] of operations()) {
      if (TS_NOT_COVERED[route] !== undefined) continue;
      const methods = TS_COVERED[route];
      assert.ok(methods, `${route} is in the OpenAPI document but neither covered by the TypeScript SDK nor listed as not covered`);
      for (const method of methods) {
        const target = method.split('.').reduce<unknown>((at, key) => (at as Record<string, unknown>)[key], client);
        assert.equal(typeof target, 'function', `TypeScript SDK: ${method} (for ${route}) is not a method`);
      }
    }
    for (const route of [...Object.keys(TS_COVERED), ...Object.keys(TS_NOT_COVERED)]) {
      assert.ok(operations().some(([r]) => r === route), `${route} is listed for the TypeScript SDK but is not in the document`);
    }
  });

  test('every error code of the registry maps to a specific class in the TypeScript SDK', async () => {
    for (const [code, definition] of Object.entries(ERROR_CODES)) {
      // The answer the server would send for this code, through the SDK's public path (its fetch option).
      const answer = JSON.stringify({ error: { code, message: 'm' }, requestId: 'req_x' });
      const client = new Kindling({ url: 'http://127.0.0.1:1', fetch: async () => new Response(answer, { status: definition.statusCode, headers: { 'content-type': 'application/json' } }) });
      const error = await client.health().then(
        () => assert.fail(`${code}: no error`),
        (failure: unknown) => failure as KindlingError,
      );
      assert.ok(error instanceof KindlingError, `${code}: not a KindlingError`);
      assert.equal(error.code, code);
      assert.equal(error.requestId, 'req_x');
      assert.notEqual(error.constructor, KindlingError, `${code} maps to the bare KindlingError`);
    }
  });

  test('a client generated by openapi-typescript + openapi-fetch compiles and runs an execution', async () => {
    const dir = join(repoRoot, 'dist', 'test', `generated-client-${process.pid}`);
    await mkdir(dir, { recursive: true });
    try {
      await writeFile(join(dir, 'api.d.ts'), astToString(await openapiTS(document as never)));
      await writeFile(
        join(dir, 'main.ts'),
        [
          "import createClient from 'openapi-fetch';",
          "import type { paths } from './api.js';",
          'const client = createClient<paths>({ baseUrl: process.argv[2] });',
          "const { data, error } = await client.POST('/v1/execute', { body: { runtime: 'bash', code: 'echo generated' } });",
          'if (error !== undefined || data === undefined) throw new Error(JSON.stringify(error));',
          'const exitCode: number = data.exitCode;',
          'process.stdout.write(JSON.stringify({ exitCode, stdout: data.stdout }));',
        ].join('\n'),
      );
      const program = ts.createProgram([join(dir, 'main.ts')], {
        strict: true,
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        skipLibCheck: true,
        types: ['node'],
        outDir: dir,
      });
      const diagnostics = [...ts.getPreEmitDiagnostics(program), ...program.emit().diagnostics];
      assert.deepEqual(diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')), []);
      await writeFile(join(dir, 'package.json'), '{"type":"module"}');
      const { execFile } = await import('node:child_process');
      const output = await new Promise<string>((resolve, reject) =>
        execFile(process.execPath, [join(dir, 'main.js'), server.url], { timeout: 60_000 }, (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout))),
      );
      assert.deepEqual(JSON.parse(output), { exitCode: 0, stdout: 'generated\n' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
