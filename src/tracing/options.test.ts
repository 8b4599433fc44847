import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { otlpConfig } from '../cli/serve.js';
import { parseOtlpHeaders, parseSamplingRatio, tracesUrl } from './options.js';

describe('tracing options', () => {
  it('reads --otlp-endpoint as OTEL_EXPORTER_OTLP_ENDPOINT is read: /v1/traces appended to a base URL', () => {
    assert.equal(tracesUrl('http://127.0.0.1:4318'), 'http://127.0.0.1:4318/v1/traces');
    assert.equal(tracesUrl('http://collector:4318/'), 'http://collector:4318/v1/traces');
    assert.equal(tracesUrl('https://otlp.example.com/otlp'), 'https://otlp.example.com/otlp/v1/traces');
    assert.equal(tracesUrl('http://jaeger:4318/v1/traces'), 'http://jaeger:4318/v1/traces');
  });

  it('refuses a bad endpoint with a message saying what to give', () => {
    assert.throws(() => tracesUrl('collector:4318'), /--otlp-endpoint must be an http: or https: URL/);
    assert.throws(() => tracesUrl('not a url'), /--otlp-endpoint "not a url" is not a URL; give the OTLP\/HTTP receiver's base URL/);
    assert.throws(() => tracesUrl('grpc://collector:4317'), /gRPC \(4317\) is not supported/);
    assert.throws(() => tracesUrl('http://user:secret@collector:4318'), /--otlp-headers/);
    assert.throws(() => tracesUrl('http://collector:4318/?x=1'), /no query/);
  });

  it('parses headers and the sampling ratio', () => {
    assert.deepEqual(parseOtlpHeaders('Authorization=Basic%20abc, x-scope-orgid=tenant1'), { authorization: 'Basic abc', 'x-scope-orgid': 'tenant1' });
    assert.throws(() => parseOtlpHeaders('novalue'), /name=value/);
    assert.equal(parseSamplingRatio('0.25'), 0.25);
    for (const bad of ['', '-0.1', '1.5', 'half']) assert.throws(() => parseSamplingRatio(bad), /from 0 to 1/);
  });

  it('builds the server config from the serve options; none without an endpoint', () => {
    const options = { otlpSamplingRatio: 1, otlpExportTimeoutMs: 10_000, otlpBatchDelayMs: 5000, otlpMaxQueueSpans: 2048 };
    assert.equal(otlpConfig(options, {}), null);
    assert.deepEqual(otlpConfig({ ...options, otlpEndpoint: 'http://c:4318' }, { otlpHeaders: 'a=b' }), {
      url: 'http://c:4318/v1/traces',
      samplingRatio: 1,
      exportTimeoutMs: 10_000,
      batchDelayMs: 5000,
      maxQueueSpans: 2048,
      headers: { a: 'b' },
    });
    assert.throws(() => otlpConfig({ ...options, otlpEndpoint: 'ftp://c' }, {}), /http: or https:/);
  });
});
