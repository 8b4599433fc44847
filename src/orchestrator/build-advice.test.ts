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
