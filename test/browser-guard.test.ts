/**
 * The open local mode and the browser: a web page the operator visits must not drive the server. A WebSocket upgrade
 * or a state-changing request from a page of another origin is refused (403 FORBIDDEN_ORIGIN), and a request naming a
 * host that is not the server's (DNS rebinding: the page's own name resolving to 127.0.0.1) is refused (421
 * HOST_NOT_ALLOWED), with auth off and on. Clients that send no Origin (curl, the SDK, the CLI) and the server's own
 * origin (the console at `/`) keep working. Real server on the sandbox executor.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { Kindling } from '@kindling/sdk';
import { rawRequest, type RawAnswer } from './helpers/raw-request.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const EVIL_ORIGIN = 'http://evil.example';
const REBOUND_HOST = 'rebind.evil.example';

/** An HTTP request with exactly these headers (see rawRequest) and an optional JSON body. */
const send = (url: string, method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<RawAnswer> =>
  rawRequest(url, method, path, body === undefined ? undefined : JSON.stringify(body), headers);

/** Opens GET /v1/execute/ws with `headers`; resolves with the socket or the HTTP status it was refused with. */
function upgrade(url: string, headers: Record<string, string>): Promise<{ socket: WebSocket } | { status: number; body: string }> {
  const socket = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/execute/ws`, { headers });
  return new Promise((resolve, reject) => {
    socket.once('open', () => resolve({ socket }));
    socket.once('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    socket.once('error', reject);
  });
}

async function closed(socket: WebSocket): Promise<void> {
  if (socket.readyState === WebSocket.CLOSED) return;
  await new Promise((resolve) => {
    socket.once('close', resolve);
    socket.close();
  });
}

describe('browser guard in open local mode (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let own: string;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
    own = new URL(server.url).host;
  });
  after(async () => {
    await server?.stop();
  });

  it('refuses a WebSocket upgrade from a page of another origin; its own origin and no origin may connect', async () => {
    const evil = await upgrade(server.url, { origin: EVIL_ORIGIN });
    assert.ok('status' in evil, 'the upgrade from http://evil.example was accepted');
    assert.equal(evil.status, 403);
    assert.equal((JSON.parse(evil.body) as { error: { code: string } }).error.code, 'FORBIDDEN_ORIGIN');
    for (const origin of ['null', `http://${REBOUND_HOST}:${new URL(server.url).port}`, `https://${own}.evil.example`]) {
      const refused = await upgrade(server.url, { origin });
      assert.ok('status' in refused && refused.status === 403, `an upgrade from ${origin} was accepted`);
    }

    for (const headers of [{ origin: server.url }, {}] as Record<string, string>[]) {
      const opened = await upgrade(server.url, headers);
      assert.ok('socket' in opened, `refused: ${JSON.stringify(opened)}`);
      await closed(opened.socket);
    }
  });

  it('refuses POST /v1/tenants naming a rebound host or sent by another origin: no tenant, no admin key', async () => {
    const rebound = await send(server.url, 'POST', '/v1/tenants', { host: `${REBOUND_HOST}:${new URL(server.url).port}` }, { name: 'rebound' });
    assert.equal(rebound.status, 421, rebound.text);
    assert.equal(rebound.json().error.code, 'HOST_NOT_ALLOWED');
    assert.match(rebound.json().error.message, /--allowed-hosts/);
    assert.equal(rebound.text.includes('kdl_'), false);

    // Even the same-origin pair of a rebound page (Origin and Host both its name) is refused, for the Host.
    const pair = await send(server.url, 'POST', '/v1/tenants', { host: REBOUND_HOST, origin: `http://${REBOUND_HOST}` }, { name: 'rebound' });
    assert.equal(pair.status, 421, pair.text);

    const crossOrigin = await send(server.url, 'POST', '/v1/tenants', { host: own, origin: EVIL_ORIGIN }, { name: 'evil' });
    assert.equal(crossOrigin.status, 403, crossOrigin.text);
    assert.equal(crossOrigin.json().error.code, 'FORBIDDEN_ORIGIN');

    for (const [method, path] of [['DELETE', '/v1/functions/x'], ['PUT', '/v1/functions/x'], ['PATCH', '/v1/tenants/default'], ['POST', '/v1/execute']] as const) {
      const refused = await send(server.url, method, path, { host: own, origin: EVIL_ORIGIN }, {});
      assert.equal(refused.status, 403, `${method} ${path}: ${refused.text}`);
    }
    // Every route, public ones included, checks the Host.
    for (const path of ['/healthz', '/readyz', '/v1/tenants', '/']) {
      assert.equal((await send(server.url, 'GET', path, { host: REBOUND_HOST })).status, 421, path);
    }

    // Nothing was created and the server is still in open local mode.
    const tenants = await send(server.url, 'GET', '/v1/tenants', { host: own });
    assert.equal(tenants.status, 200, tenants.text);
    assert.deepEqual((tenants.json().tenants as { name: string }[]).map((tenant) => tenant.name), ['default']);
    assert.equal((await send(server.url, 'GET', '/v1/tenant', { host: own })).json().authEnabled, false);
  });

  it('answers the server own addresses and origin, and clients without an Origin (SDK)', async () => {
    const port = new URL(server.url).port;
    for (const host of [own, `localhost:${port}`, `[::1]:${port}`, `127.0.0.2:${port}`, 'localhost', `LOCALHOST:${port}`]) {
      const answer = await send(server.url, 'GET', '/healthz', { host });
      assert.equal(answer.status, 200, `Host ${host}: ${answer.text}`);
    }
    // The console's own calls: same origin (by address or as localhost), e.g. a deploy.
    for (const [host, origin] of [[own, server.url], [`localhost:${port}`, `http://localhost:${port}`]] as const) {
      const deployed = await send(server.url, 'PUT', '/v1/functions/same-origin', { host, origin }, { runtime: 'bash', code: 'echo hi' });
      assert.ok(deployed.status === 200 || deployed.status === 201, `${origin}: ${deployed.text}`);
    }
    // A cross-origin GET is answered (it changes nothing; without CORS headers the browser keeps it from the page).
    const read = await send(server.url, 'GET', '/v1/functions', { host: own, origin: EVIL_ORIGIN });
    assert.equal(read.status, 200);
    assert.equal(read.headers['access-control-allow-origin'], undefined);

    const client = new Kindling({ url: server.url });
    const result = await client.execute({ runtime: 'bash', code: 'echo sdk' });
    assert.equal(result.stdout, 'sdk\n');
    const viaLocalhost = new Kindling({ url: `http://localhost:${port}` });
    assert.equal((await viaLocalhost.health()).status, 'ok');
  });
});

describe('browser guard with keys and --allowed-hosts (sandbox executor)', { skip: unavailable ?? false }, () => {
  const ADMIN_KEY = 'guard-admin-key-0123456789';
  let server: TestServer;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN_KEY, allowedHosts: [{ name: 'kindling.test' }, { name: 'proxy.test', port: 8443 }] });
  });
  after(async () => {
    await server?.stop();
  });

  it('refuses a rebound Host and a foreign Origin even with the admin key', async () => {
    const auth = { authorization: `Bearer ${ADMIN_KEY}` };
    const rebound = await send(server.url, 'POST', '/v1/tenants', { ...auth, host: REBOUND_HOST }, { name: 'rebound' });
    assert.equal(rebound.status, 421, rebound.text);
    const crossOrigin = await send(server.url, 'POST', '/v1/tenants', { ...auth, host: new URL(server.url).host, origin: EVIL_ORIGIN }, { name: 'evil' });
    assert.equal(crossOrigin.status, 403, crossOrigin.text);
    const evil = await upgrade(server.url, { ...auth, origin: EVIL_ORIGIN });
    assert.ok('status' in evil && evil.status === 403, 'a cross-origin upgrade with the admin key was accepted');
    const tenants = await send(server.url, 'GET', '/v1/tenants', auth);
    assert.deepEqual((tenants.json().tenants as { name: string }[]).map((tenant) => tenant.name), ['default']);
  });

  it('answers the names given with --allowed-hosts, as Host and as Origin, on their port when one is given', async () => {
    const auth = { authorization: `Bearer ${ADMIN_KEY}` };
    for (const host of ['kindling.test', 'kindling.test:9999', 'Kindling.Test', 'proxy.test:8443']) {
      assert.equal((await send(server.url, 'GET', '/v1/functions', { ...auth, host })).status, 200, host);
    }
    assert.equal((await send(server.url, 'GET', '/v1/functions', { ...auth, host: 'proxy.test:8444' })).status, 421);
    // A console behind a TLS proxy that rewrites Host to the server's address: its page's origin is an allowed name.
    const own = new URL(server.url).host;
    const created = await send(server.url, 'POST', '/v1/tenants', { ...auth, host: own, origin: 'https://proxy.test:8443' }, { name: 'proxied' });
    assert.equal(created.status, 201, created.text);
    assert.equal((await send(server.url, 'POST', '/v1/tenants', { ...auth, host: own, origin: 'https://proxy.test' }, { name: 'other' })).status, 403);
    const opened = await upgrade(server.url, { ...auth, origin: 'http://kindling.test:3000' });
    assert.ok('socket' in opened, `refused: ${JSON.stringify(opened)}`);
    await closed(opened.socket);
  });
});
