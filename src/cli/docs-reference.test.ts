/**
 * The reference in docs/ names everything a user can meet: every error code of the registry in docs/api.md, every
 * option of `kindling serve` in docs/operations.md. (Routes: test/openapi-contract.test.ts holds docs/api.md against
 * the OpenAPI document of a real server.) A code, an option or a route added without its documentation fails here.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { ERROR_CODES } from '../core/errors.js';
import { registerServeCommand } from './serve.js';

const docs = (name: string): string => readFileSync(fileURLToPath(new URL(`../../../docs/${name}`, import.meta.url)), 'utf8');

describe('the reference in docs/', () => {
  it('docs/api.md names every error code of the registry', () => {
    const api = docs('api.md');
    const missing = Object.keys(ERROR_CODES).filter((code) => !api.includes(`\`${code}\``));
    assert.deepEqual(missing, [], 'error codes missing from docs/api.md');
  });

  it('docs/operations.md names every option of kindling serve', () => {
    const program = new Command();
    registerServeCommand(program, { port: 8080, host: '127.0.0.1', dataDir: '/d', imagesDir: '/i', adminKey: undefined, logLevel: 'info', dockerSocketPath: '/s', version: 't' });
    const serve = program.commands.find((command) => command.name() === 'serve');
    assert.ok(serve);
    const flags = serve.options.map((option) => option.long).filter((flag): flag is string => flag !== undefined);
    assert.ok(flags.length > 30, `${flags.length} options read`);
    const operations = docs('operations.md');
    const missing = flags.filter((flag) => !new RegExp(`\`${flag}[\\s\`]`).test(operations));
    assert.deepEqual(missing, [], 'serve options missing from docs/operations.md');
  });
});
