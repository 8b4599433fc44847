import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import {
  IMAGE_RECIPES,
  IMAGE_SHORT_NAMES,
  canonicalJson,
  findRecipe,
  imageRef,
  recipeFingerprint,
  recipeHash,
  resolveImageNames,
  type ImageRecipe,
} from './recipes.js';

const python = IMAGE_RECIPES.python;

test('canonicalJson sorts keys at every level and keeps array order', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [2, 1], c: null } }), '{"a":{"c":null,"d":[2,1]},"b":1}');
  assert.equal(canonicalJson({ a: 1, b: 2 }), canonicalJson({ b: 2, a: 1 }));
});

test('recipeHash is a stable sha256 hex digest', () => {
  const h = recipeHash(python);
  assert.match(h, /^[0-9a-f]{64}$/);
  assert.equal(recipeHash(python), h);
  // A structurally equal copy (different object, different key order) hashes the same.
  const copy: ImageRecipe = {
    env: { ...python.env },
    check: python.check,
    packages: [...python.packages],
    description: python.description,
    runtime: python.runtime,
    tag: python.tag,
    name: python.name,
    short: python.short,
  };
  assert.equal(recipeHash(copy), h);
});

test('package order and duplicates do not change the hash', () => {
  const r: ImageRecipe = { ...IMAGE_RECIPES.rust, packages: ['rustc', 'gcc', 'libc6-dev'] };
  const reordered: ImageRecipe = { ...r, packages: ['libc6-dev', 'rustc', 'gcc', 'gcc'] };
  assert.equal(recipeHash(reordered), recipeHash(r));
});

test('every input that shapes the output changes the hash', () => {
  const h = recipeHash(python);
  const variants: Array<[string, string]> = [
    ['extra package', recipeHash({ ...python, packages: [...python.packages, 'python3-venv'] })],
    ['fewer packages', recipeHash({ ...python, packages: ['python3'] })],
    ['suite', recipeHash(python, { suite: 'trixie' })],
    ['check command', recipeHash({ ...python, check: 'python3 -c 1' })],
    ['env', recipeHash({ ...python, env: { ...python.env, LANG: 'C' } })],
    ['tag', recipeHash({ ...python, tag: 'v2' })],
    ['name', recipeHash({ ...python, name: 'kindling/python3' })],
  ];
  for (const [what, other] of variants) assert.notEqual(other, h, `${what} must change the hash`);
  assert.equal(new Set(variants.map(([, v]) => v)).size, variants.length);
});

test('the description does not change the hash (it does not shape the image)', () => {
  assert.equal(recipeHash({ ...python, description: 'something else' }), recipeHash(python));
});

test('the ten recipes are distinct, named kindling/<short> and hash differently', () => {
  assert.deepEqual([...IMAGE_SHORT_NAMES], ['base', 'python', 'node', 'rust', 'python3.13', 'node20', 'deno', 'bun', 'go', 'java']);
  const hashes = new Set(IMAGE_SHORT_NAMES.map((s) => recipeHash(IMAGE_RECIPES[s])));
  assert.equal(hashes.size, 10);
  for (const s of IMAGE_SHORT_NAMES) {
    assert.equal(IMAGE_RECIPES[s].short, s);
    assert.equal(IMAGE_RECIPES[s].name, `kindling/${s}`);
    assert.equal(imageRef(IMAGE_RECIPES[s]), `kindling/${s}:latest`);
    assert.ok(IMAGE_RECIPES[s].env.PATH?.includes('/usr/bin'));
  }
  assert.deepEqual([...IMAGE_RECIPES.rust.packages].sort(), ['cargo', 'gcc', 'libc6-dev', 'rustc']);
  assert.ok(IMAGE_RECIPES.python.packages.includes('python3'));
  assert.ok(IMAGE_RECIPES.node.packages.includes('nodejs'));
  // The current runtimes come from trixie, the others from bookworm; the suite is part of the hash.
  assert.equal(IMAGE_RECIPES.node20.suite, 'trixie');
  assert.equal(IMAGE_RECIPES['python3.13'].suite, 'trixie');
  assert.equal(IMAGE_RECIPES.node.suite, undefined);
  assert.equal(recipeFingerprint(IMAGE_RECIPES.node20).suite, 'trixie');
  assert.deepEqual(recipeFingerprint(IMAGE_RECIPES.node20).suites, ['trixie', 'trixie-updates', 'trixie-security']);
});

test('the fingerprint names the Debian sources but not the mirror', () => {
  const fp = recipeFingerprint(python);
  assert.deepEqual(fp.suites, ['bookworm', 'bookworm-updates', 'bookworm-security']);
  assert.equal(fp.variant, 'minbase');
  assert.doesNotMatch(canonicalJson(fp), /https?:\/\//);
});

test('recipes are frozen', () => {
  assert.throws(() => {
    (IMAGE_RECIPES.python.packages as string[]).push('x');
  }, TypeError);
  assert.throws(() => {
    (IMAGE_RECIPES as unknown as Record<string, unknown>).extra = 1;
  }, TypeError);
});

test('resolveImageNames accepts short, Docker and runtime names, dedupes and keeps a stable order', () => {
  assert.deepEqual(
    resolveImageNames([]).map((r) => r.short),
    ['base', 'python', 'node', 'rust', 'python3.13', 'node20', 'deno', 'bun', 'go', 'java'],
  );
  assert.deepEqual(
    resolveImageNames(['rust', 'kindling/python:latest', 'bash', 'python']).map((r) => r.short),
    ['base', 'python', 'rust'],
  );
  assert.equal(findRecipe('kindling/node')?.short, 'node');
  assert.equal(findRecipe('node20')?.short, 'node20');
  assert.equal(findRecipe('node18')?.short, 'node');
  assert.equal(findRecipe('python3.11')?.short, 'python');
  assert.equal(findRecipe('kindling/python3.13:latest')?.short, 'python3.13');
  assert.equal(findRecipe('nope'), undefined);
  assert.throws(
    () => resolveImageNames(['python', 'ruby']),
    (e: unknown) => e instanceof KindlingError && e.code === 'UNKNOWN_IMAGE' && /ruby/.test(e.message),
  );
});

test("an npm binary's version, integrity, entry and target are part of the hash; deno and bun pin theirs", () => {
  const deno = IMAGE_RECIPES.deno;
  const binary = deno.npmBinaries?.[0];
  assert.ok(binary !== undefined, 'deno takes its binary from npm');
  assert.equal(binary.target, '/usr/local/bin/deno');
  assert.match(binary.integrity, /^sha512-/);
  assert.equal(IMAGE_RECIPES.bun.npmBinaries?.[0]?.target, '/usr/local/bin/bun');
  const h = recipeHash(deno);
  for (const change of [{ version: '2.0.0' }, { integrity: 'sha512-other' }, { entry: 'package/bin/deno' }, { target: '/usr/bin/deno' }]) {
    assert.notEqual(recipeHash({ ...deno, npmBinaries: [{ ...binary, ...change }] }), h, JSON.stringify(change));
  }
  // Key order inside a binary does not matter.
  const reordered = Object.fromEntries(Object.entries(binary).reverse()) as unknown as typeof binary;
  assert.equal(recipeHash({ ...deno, npmBinaries: [reordered] }), h);
});
