import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { ACCEPTED_IMAGE_NAMES, imageOfAlias, resolveImageAlias } from './image-aliases.js';

test('the base families map to the base image, with or without a tag', () => {
  for (const name of ['alpine', 'alpine:latest', 'alpine:3.19', 'debian:bookworm-slim', 'ubuntu:22.04', 'busybox']) {
    assert.deepEqual(resolveImageAlias(name), { image: 'kindling/base' }, name);
  }
});

test('language images map to the runtime of that name (the newest); a tag of a version Kindling has picks it', () => {
  assert.deepEqual(resolveImageAlias('python:3.11-slim'), { runtime: 'python3.11' });
  assert.deepEqual(resolveImageAlias('python'), { runtime: 'python' });
  assert.deepEqual(resolveImageAlias('python:3.13-slim'), { runtime: 'python3.13' });
  assert.deepEqual(resolveImageAlias('python:3.13'), { runtime: 'python3.13' });
  assert.deepEqual(resolveImageAlias('python:3.130'), { runtime: 'python' });
  assert.deepEqual(resolveImageAlias('node:20-slim'), { runtime: 'node20' });
  assert.deepEqual(resolveImageAlias('node:20.11.1'), { runtime: 'node20' });
  assert.deepEqual(resolveImageAlias('node:200'), { runtime: 'node' });
  assert.deepEqual(resolveImageAlias('node:18-alpine'), { runtime: 'node18' });
  assert.equal(imageOfAlias(resolveImageAlias('node:20')), 'kindling/node20');
  // An untagged or other-version name gets the newest.
  assert.equal(imageOfAlias(resolveImageAlias('node')), 'kindling/node20');
  assert.equal(imageOfAlias(resolveImageAlias('python:3')), 'kindling/python3.13');
  assert.deepEqual(resolveImageAlias('rust:1.75'), { runtime: 'rust' });
  assert.deepEqual(resolveImageAlias('golang:1.24-bookworm'), { runtime: 'go' });
  assert.deepEqual(resolveImageAlias('openjdk:21-slim'), { runtime: 'java' });
  assert.deepEqual(resolveImageAlias('amazoncorretto:21'), { runtime: 'java' });
  assert.deepEqual(resolveImageAlias('denoland/deno:2.1.4'), { runtime: 'deno' });
  assert.deepEqual(resolveImageAlias('oven/bun'), { runtime: 'bun' });
  assert.deepEqual(resolveImageAlias('oven/bun:1-slim'), { runtime: 'bun' });
  assert.throws(() => resolveImageAlias('oven/other:1'), /has no equivalent here/);
  assert.throws(() => resolveImageAlias('denoland/constructor'), /has no equivalent here/);
  assert.equal(imageOfAlias(resolveImageAlias('python:3.11-slim')), 'kindling/python');
  assert.equal(imageOfAlias(resolveImageAlias('rust:latest')), 'kindling/rust');
});

test('a kindling/ name is used as is', () => {
  assert.deepEqual(resolveImageAlias('kindling/python'), { image: 'kindling/python' });
  assert.deepEqual(resolveImageAlias('kindling/custom:v2'), { image: 'kindling/custom:v2' });
});

test('anything else is UNKNOWN_IMAGE (400) naming the accepted names', () => {
  for (const name of ['pytorch/pytorch:latest', 'ruby:3.3', 'node:20-with-deps extra', 'kindling/', '', 'ALPINE', 'alpine:', 'x'.repeat(5000)]) {
    assert.throws(
      () => resolveImageAlias(name),
      (error: unknown) =>
        error instanceof KindlingError &&
        error.code === 'UNKNOWN_IMAGE' &&
        error.statusCode === 400 &&
        error.message.includes('alpine[:tag]') &&
        error.message.includes('kindling/<name>') &&
        error.message.length < 600,
      JSON.stringify(name.slice(0, 40)),
    );
  }
  assert.ok(ACCEPTED_IMAGE_NAMES.includes('python[:tag]'));
});
