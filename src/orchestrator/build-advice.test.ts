import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildFailureAdvice } from './build-advice.js';

test('a build that could not reach its registry points at the network, not at package.json', () => {
  const npmLog = 'npm http fetch GET https://registry.npmjs.org/ms attempt 1 failed with EAI_AGAIN\nnpm error code EAI_AGAIN\n';
  const advice = buildFailureAdvice('npm', npmLog, 'https://registry.npmjs.org/');
  assert.match(advice, /could not reach https:\/\/registry\.npmjs\.org\//);
  assert.match(advice, /--egress-allow/);
  assert.match(advice, /--build-registry/);
  assert.doesNotMatch(advice, /package-lock/);
  const pipLog = "WARNING: Retrying (Retry(total=4...)) after connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/kgate/\n";
  assert.match(buildFailureAdvice('pip', pipLog, 'http://10.0.0.5/simple'), /could not reach http:\/\/10\.0\.0\.5\/simple.*--pip-index-url/s);
});

test('any other failure points at the manifest', () => {
  assert.match(buildFailureAdvice('npm', 'npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/nope\n', 'r'), /fix package\.json/);
  assert.match(buildFailureAdvice('pip', 'ERROR: No matching distribution found for nope\n', 'i'), /fix requirements\.txt/);
});

test('a compile build: missing Go modules point at vendoring (or the proxy), anything else at the code', () => {
  const missing = 'main.go:3:8: missing go.sum entry for module providing package example.org/x (imported by app); to add:\n';
  assert.match(buildFailureAdvice('compile', missing, 'off'), /go mod vendor.*--build-go-proxy/);
  assert.match(buildFailureAdvice('compile', 'go: example.org/x@v1.0.0: dial tcp: lookup proxy.example: Temporary failure in name resolution\n', 'https://proxy.example'), /could not reach the Go module proxy https:\/\/proxy\.example/);
  assert.match(buildFailureAdvice('compile', './main.go:3:14: undefined: x\n', 'off'), /fix the compile errors/);
});

test('a compile build: a crate that is not vendored points at cargo vendor; a rust compile error at the code', () => {
  const offline = 'error: no matching package named `serde` found\nlocation searched: registry `crates-io`\nAs a reminder, you\'re using offline mode (--offline) which can sometimes cause surprising resolution failures\n';
  assert.match(buildFailureAdvice('compile', offline, 'offline'), /cargo vendor/);
  assert.match(buildFailureAdvice('compile', 'error[E0425]: cannot find value `x` in this scope\n', 'offline'), /fix the compile errors/);
});
