import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clusterSecurity } from '../cli/cluster-security.js';
import { backoffDelayMs, ClusterUrlError, parseClusterUrls, securityOptions } from './connection.js';

describe('parseClusterUrls', () => {
  it('normalises a list and fills in the default port', () => {
    assert.deepEqual(parseClusterUrls(' nats://h1:4222, nats://h2 ,nats://10.0.0.3:5222/'), ['nats://h1:4222', 'nats://h2:4222', 'nats://10.0.0.3:5222']);
    assert.deepEqual(parseClusterUrls('nats://[::1]:4223'), ['nats://[::1]:4223']);
    assert.deepEqual(parseClusterUrls('tls://h1,tls://h2:4223'), ['tls://h1:4222', 'tls://h2:4223']);
  });

  const bad: Array<[string, RegExp]> = [
    ['', /at least one NATS URL/],
    [' , ', /at least one NATS URL/],
    ['h1:4222', /scheme "h1"|not a URL/],
    ['http://h1:4222', /scheme "http"; use nats:\/\//],
    ['nats://h1:4222,tls://h2:4222', /mixes nats:\/\/ and tls:\/\//],
    ['tls://u:p@h1:4222', /--cluster-password-file/],
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

describe('securing the connection', () => {
  it('tls:// URLs require TLS; credentials become the client options; nothing set means none', () => {
    assert.deepEqual(securityOptions(['nats://h1:4222']), { servers: ['nats://h1:4222'] });
    assert.deepEqual(securityOptions(['tls://h1:4222']), { servers: ['nats://h1:4222'], tls: {} });
    assert.deepEqual(securityOptions(['nats://h1:4222'], { tls: { ca: 'CA' }, auth: { user: 'u', password: 'p' } }), { servers: ['nats://h1:4222'], tls: { ca: 'CA' }, user: 'u', pass: 'p' });
    assert.deepEqual(securityOptions(['nats://h1:4222'], { auth: { token: 't' } }), { servers: ['nats://h1:4222'], token: 't' });
    assert.equal(typeof securityOptions(['nats://h1:4222'], { auth: { creds: 'x' } }).authenticator, 'function');
  });

  it('the CLI options read secrets from files and refuse combinations that make no sense', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-cluster-security-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'pass'), 's3cret\n');
    await writeFile(join(dir, 'empty'), '\n');
    assert.equal(clusterSecurity({}), undefined);
    assert.deepEqual(clusterSecurity({ clusterUser: 'gw', clusterPasswordFile: join(dir, 'pass') }), { auth: { user: 'gw', password: 's3cret' } });
    assert.deepEqual(clusterSecurity({ clusterTokenFile: join(dir, 'pass'), clusterTlsCa: join(dir, 'pass') }), { tls: { ca: 's3cret' }, auth: { token: 's3cret' } });
    assert.throws(() => clusterSecurity({ clusterUser: 'gw' }), /--cluster-user and --cluster-password-file go together/);
    assert.throws(() => clusterSecurity({ clusterTlsCert: 'c' }), /--cluster-tls-cert and --cluster-tls-key go together/);
    assert.throws(() => clusterSecurity({ clusterTokenFile: 'a', clusterCreds: 'b' }), /choose one way to authenticate/);
    assert.throws(() => clusterSecurity({ clusterTokenFile: join(dir, 'missing') }), /--cluster-token-file: cannot read .*ENOENT/);
    assert.throws(() => clusterSecurity({ clusterTokenFile: join(dir, 'empty') }), /is empty/);
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
