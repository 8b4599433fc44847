import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostGuard, parseAllowedHosts } from './host-guard.js';

const refusedWith = (code: string) => (error: unknown) => (error as { code?: string }).code === code;

describe('parseAllowedHosts', () => {
  it('takes names with optional ports, lower-cased, and says what is wrong otherwise', () => {
    assert.deepEqual(parseAllowedHosts(' Kindling.Example.com, lan-box:3000,,'), [{ name: 'kindling.example.com' }, { name: 'lan-box', port: 3000 }]);
    assert.deepEqual(parseAllowedHosts(''), []);
    for (const bad of ['http://x', 'a b', 'x:', 'x:99999', 'x:3a', '*.example.com', '.example.com', 'a..b', 'x'.repeat(300)]) {
      assert.throws(() => parseAllowedHosts(bad), /--allowed-hosts/, bad);
    }
  });
});

describe('HostGuard.checkHost', () => {
  const guard = new HostGuard([...HostGuard.listeningName('box.lan'), ...parseAllowedHosts('proxy.example:8443')]);

  it('answers IP addresses, localhost, the listening name and allowed names', () => {
    for (const host of [undefined, '127.0.0.1:3000', '10.1.2.3', '[::1]:3000', '[fe80::1]', 'localhost', 'LocalHost:1', 'localhost.:80', 'box.lan:3000', 'BOX.LAN', 'proxy.example:8443']) {
      assert.doesNotThrow(() => guard.checkHost(host), String(host));
    }
  });

  it('refuses other names (DNS rebinding), other ports of a name given with one, and malformed values', () => {
    for (const host of ['rebind.evil.example', 'rebind.evil.example:3000', '127.0.0.1.nip.io', 'localhost.evil.example', 'proxy.example:8444', 'proxy.example', '::1', '[::1', '[::1]x', '', 'a'.repeat(20_000), '127.0.0.1:', '2130706433']) {
      assert.throws(() => guard.checkHost(host), refusedWith('HOST_NOT_ALLOWED'), host.slice(0, 40));
    }
  });

  it('takes no name from a listening address', () => {
    for (const host of ['127.0.0.1', '0.0.0.0', '::', '::1']) assert.deepEqual(HostGuard.listeningName(host), [], host);
    assert.deepEqual(HostGuard.listeningName('Kindling.LAN'), [{ name: 'kindling.lan' }]);
  });
});

describe('HostGuard.checkOrigin', () => {
  const guard = new HostGuard(parseAllowedHosts('console.example,proxy.example:8443'));

  it('lets requests without an Origin, from the server own origin, and from allowed names through', () => {
    const cases: [string | undefined, string | undefined][] = [
      [undefined, 'rebind.evil.example'],
      ['http://127.0.0.1:3000', '127.0.0.1:3000'],
      ['http://LOCALHOST:3000', 'localhost:3000'],
      ['http://127.0.0.1', '127.0.0.1'],
      ['http://127.0.0.1', '127.0.0.1:80'],
      ['https://box.lan', 'box.lan:443'],
      ['http://[::1]:3000', '[::1]:3000'],
      ['https://console.example', '127.0.0.1:3000'],
      ['https://proxy.example:8443', '127.0.0.1:3000'],
    ];
    for (const [origin, host] of cases) assert.doesNotThrow(() => guard.checkOrigin(origin, host), `${origin} on ${host}`);
  });

  it('refuses pages of other origins', () => {
    const cases: [string, string | undefined][] = [
      ['http://evil.example', '127.0.0.1:3000'],
      ['null', '127.0.0.1:3000'],
      ['file://', '127.0.0.1:3000'],
      ['http://127.0.0.1:3001', '127.0.0.1:3000'],
      ['http://localhost:3000', '127.0.0.1:3000'],
      ['http://127.0.0.1:3000', undefined],
      ['https://proxy.example', '127.0.0.1:3000'],
      ['chrome-extension://abc', '127.0.0.1:3000'],
      ['not a url', '127.0.0.1:3000'],
      [`http://${'a'.repeat(20_000)}`, '127.0.0.1:3000'],
    ];
    for (const [origin, host] of cases) assert.throws(() => guard.checkOrigin(origin, host), refusedWith('FORBIDDEN_ORIGIN'), `${origin.slice(0, 40)} on ${host}`);
  });
});
