/**
 * The expressions rewritten to run in linear time accept exactly what the backtracking ones did: checked on every
 * string of up to 6 characters over an alphabet of the characters that matter (and the examples that matter). And
 * every `pattern` of the API's schemas fails fast on long runs of one character (the shape that makes overlapping
 * repetitions backtrack): a new pattern that backtracks fails here before it reaches a server.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hasEsModuleSyntax, isNodeEsModule } from '../../agent/files.js';
import * as schemas from './schemas.js';
import { BASE64_TEXT } from './schemas.js';

/** Every string of length 0..maxLength over `alphabet` (tokens may be longer than one character). */
function* allStrings(alphabet: string[], maxLength: number): Generator<string> {
  let level = [''];
  for (let length = 0; length <= maxLength; length++) {
    yield* level;
    if (length < maxLength) level = level.flatMap((prefix) => alphabet.map((token) => prefix + token));
  }
}

describe('linear rewrites of backtracking expressions', () => {
  it('stdinBase64: the same texts as ^[A-Za-z0-9+/\\n\\r]*={0,2}[\\n\\r]*$', () => {
    const before = new RegExp('^[A-Za-z0-9+/\\n\\r]*={0,2}[\\n\\r]*$', 'u');
    const after = new RegExp(BASE64_TEXT, 'u');
    let checked = 0;
    for (const text of allStrings(['A', '/', '=', '\n', '\r', '!', ' '], 6)) {
      assert.equal(after.test(text), before.test(text), JSON.stringify(text));
      checked++;
    }
    assert.ok(checked > 100_000);
    for (const valid of ['', 'QUJD', 'QUI=', 'QQ==\n', 'QUJD\r\nREVG\n', 'QQ==\r\n\r\n']) assert.ok(after.test(valid), JSON.stringify(valid));
    for (const invalid of ['QQ===', 'QQ==QQ==', 'QQ=\n=', 'Q Q', '!']) assert.ok(!after.test(invalid), JSON.stringify(invalid));
  });

  it('ES module detection: the same answers as /^\\s*(import\\s[^(]|import\\s*\\{|export\\s)/m', () => {
    const before = /^\s*(import\s[^(]|import\s*\{|export\s)/m;
    let checked = 0;
    for (const code of allStrings(['import', 'export', ' ', '\n', '\t', '\r', '\u2028', '\u00a0', '{', '(', 'x'], 5)) {
      assert.equal(hasEsModuleSyntax(code), before.test(code), JSON.stringify(code));
      checked++;
    }
    assert.ok(checked > 100_000);
    assert.equal(isNodeEsModule('\n\n  export function handler() {}'), true);
    assert.equal(isNodeEsModule('const x = await import("y");\nmodule.exports.handler = () => x;'), false);
    assert.equal(isNodeEsModule('import {\n a } from "b";\nmodule.exports = 1'), true);
    assert.equal(isNodeEsModule('exports.handler = () => 1'), false);
    assert.equal(isNodeEsModule('async function handler() {}'), true, 'neither: the contract default, ES module');
  });
});

/** Every `pattern` and `patternProperties` key in a schema tree (TypeBox schemas are plain JSON Schema objects). */
function patternsOf(schema: unknown, found = new Set<string>()): Set<string> {
  if (Array.isArray(schema)) for (const item of schema) patternsOf(item, found);
  else if (schema !== null && typeof schema === 'object') {
    for (const [key, value] of Object.entries(schema)) {
      if (key === 'pattern' && typeof value === 'string') found.add(value);
      // A Record's key pattern (env names) is a patternProperties key, tried on every property name.
      if (key === 'patternProperties' && value !== null && typeof value === 'object') for (const keyPattern of Object.keys(value)) found.add(keyPattern);
      patternsOf(value, found);
    }
  }
  return found;
}

describe('API schema patterns', () => {
  it('each fails in linear time on 30k-character runs of any one character (the old stdinBase64 pattern took seconds)', () => {
    const patterns = [...patternsOf(Object.values(schemas))];
    assert.ok(patterns.includes(BASE64_TEXT) && patterns.length >= 4, `found ${patterns.length} patterns`);
    const runs = ['\n', '\r', ' ', 'a', 'A', '0', '=', '/', '.', '-', '_', ':', '+', '\u0000'].flatMap((char) => {
      const run = char.repeat(30_000);
      return [`${run}!`, `a${run}!`, `/${run}\u0000`, `${run}=${run}!`];
    });
    for (const pattern of patterns) {
      const regex = new RegExp(pattern, 'u'); // as ajv compiles it
      const started = performance.now();
      for (const input of runs) regex.test(input);
      const ms = performance.now() - started;
      // Linear: a few ms for all 56 inputs; one quadratic input alone takes seconds. Generous for a shared machine.
      assert.ok(ms < 1000, `pattern ${pattern} took ${ms.toFixed(0)} ms on runs of one character`);
    }
  });
});
