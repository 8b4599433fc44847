import assert from 'node:assert/strict';
import { it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { validateCustomSpec } from './custom.js';

it('"from": python and node mean the newest, as runtimes do; kindling/python and kindling/node name bookworm\'s images', () => {
  assert.equal(validateCustomSpec('x', { from: 'python' }).base.name, 'kindling/python3.13');
  assert.equal(validateCustomSpec('x', { from: 'node' }).base.name, 'kindling/node20');
  assert.equal(validateCustomSpec('x', { from: 'kindling/python' }).base.name, 'kindling/python');
  assert.equal(validateCustomSpec('x', { from: 'node18' }).base.name, 'kindling/node');
  assert.equal(validateCustomSpec('x', { from: 'go' }).base.name, 'kindling/go');
  assert.throws(() => validateCustomSpec('x', { from: 'constructor' }), (error: unknown) => error instanceof KindlingError && error.code === 'UNKNOWN_IMAGE');
});
