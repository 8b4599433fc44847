import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelayMs, ClusterUrlError, parseClusterUrls } from './connection.js';

describe('parseClusterUrls', () => {
  it('normalises a list and fills in the default port', () => {
    assert.deepEqual(parseClusterUrls(' nats://h1:4222, nats://h2 ,nats://10.0.0.3:5222/'), ['nats://h1:4222', 'nats://h2:4222', 'nats://10.0.0.3:5222']);
    assert.deepEqual(parseClusterUrls('nats://[::1]:4223'), ['nats://[::1]:4223']);
  });

  const bad: Array<[string, RegExp]> = [
    ['', /at least one NATS URL/],
    [' , ', /at least one NATS URL/],
    ['h1:4222', /scheme "h1"|not a URL/],
    ['http://h1:4222', /scheme "http"; only nats:\/\//],
    ['tls://h1:4222', /scheme "tls"/],
    ['nats://h1:0', /port 0; use 1-65535/],
    ['nats://h1:70000', /port 70000; use 1-65535/],
    ['nats://user:pw@h1:4222', /credentials/],
    ['nats://h1:4222/x', /path, query or fragment/],
    ['nats://h1:4222?a=1', /path, query or fragment/],
    ['nats://h1:4222,nats://h1', /listed twice/],
    ['nats://', /no host|not a URL/],
  ];
  for (const [text, message] of bad) {
    it(`refuses ${JSON.stringify(text)} with a message saying how to fix it`, () => {
      assert.throws(() => parseClusterUrls(text), (error: unknown) => error instanceof ClusterUrlError && message.test(error.message));
    });
  }

  it('refuses more than the maximum number of URLs', () => {
    const urls = Array.from({ length: 5 }, (_, i) => `nats://h${i}:4222`).join(',');
    assert.equal(parseClusterUrls(urls, 5).length, 5);
    assert.throws(() => parseClusterUrls(`${urls},nats://h9:4222`, 5), /at most 5 URLs, got 6/);
  });
});

describe('backoffDelayMs', () => {
  it('grows exponentially up to the maximum and is jittered below the ceiling', () => {
    assert.equal(backoffDelayMs(0, 100, 1_000, () => 0.999), 99);
    assert.equal(backoffDelayMs(3, 100, 1_000, () => 0.999), 799);
    assert.equal(backoffDelayMs(10, 100, 1_000, () => 0.999), 999);
    assert.equal(backoffDelayMs(1_000, 100, 1_000, () => 0.5), 500);
    assert.equal(backoffDelayMs(5, 100, 1_000, () => 0), 0);
  });
});
