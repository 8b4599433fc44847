import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveImageAlias } from './image-aliases.js';

test('image names of the FaaS blueprint map onto the runtime images', () => {
  assert.deepEqual(resolveImageAlias('alpine:latest'), { runtime: 'bash' });
  assert.deepEqual(resolveImageAlias('ubuntu'), { runtime: 'bash' });
  assert.deepEqual(resolveImageAlias('docker.io/library/debian:12'), { runtime: 'bash' });
  assert.deepEqual(resolveImageAlias('busybox@sha256:abc'), { runtime: 'bash' });
  assert.deepEqual(resolveImageAlias('python:3.11-slim'), { runtime: 'python' });
  assert.deepEqual(resolveImageAlias('node:20'), { runtime: 'node' });
  assert.deepEqual(resolveImageAlias('rust:1.80'), { runtime: 'rust' });
});

test('kindling images and unknown names are used as they are', () => {
  assert.deepEqual(resolveImageAlias('kindling/python'), { image: 'kindling/python' });
  assert.deepEqual(resolveImageAlias('kindling/alpine'), { image: 'kindling/alpine' });
  assert.deepEqual(resolveImageAlias('ghcr.io/acme/tool:1'), { image: 'ghcr.io/acme/tool:1' });
  assert.deepEqual(resolveImageAlias('pythonista'), { image: 'pythonista' });
});
