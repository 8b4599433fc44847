/**
 * `kindling sandbox port ID PORT --forward LOCAL`: a local HTTP server on 127.0.0.1:LOCAL that passes every request
 * (and upgrade: WebSocket) on to /v1/sandboxes/ID/ports/PORT/... of the server with the API key added, so that a
 * browser or curl on this machine can use a server inside the sandbox without knowing the key. Loopback only: anyone
 * who can connect to it uses the key, for this one sandbox port. The browser's Origin is not passed on (the API would
 * refuse a page of another origin; the forward is that page's own origin on purpose).
 */
import { request as httpRequest, createServer, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { AddressInfo } from 'node:net';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'authorization', 'origin']);

function passOn(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  return out;
}

/** Starts the forward; resolves with the local port once listening. */
export async function forwardPort(target: string, apiKey: string | undefined, localPort: number): Promise<number> {
  const base = new URL(target);
  const secure = base.protocol === 'https:';
  const auth: Record<string, string> = apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` };
  const server = createServer((req, res) => {
    const upstream = (secure ? httpsRequest : httpRequest)(
      { protocol: base.protocol, hostname: base.hostname, port: base.port, method: req.method, path: base.pathname + (req.url ?? '/'), headers: { ...passOn(req.headers), ...auth } },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, passOn(answer.headers));
        answer.pipe(res);
      },
    );
    upstream.on('error', (error) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`kindling port forward: ${error.message}\n`);
    });
    req.pipe(upstream);
  });
  server.on('upgrade', (req, socket, head) => {
    const port = Number(base.port) || (secure ? 443 : 80);
    const remote = secure ? tlsConnect({ host: base.hostname, port, servername: base.hostname }) : netConnect(port, base.hostname);
    const headers = { ...passOn(req.headers), ...auth, host: base.host, connection: 'Upgrade', upgrade: String(req.headers.upgrade) };
    const lines = [`${req.method} ${base.pathname}${req.url ?? '/'} HTTP/1.1`, ...Object.entries(headers).flatMap(([name, value]) => (Array.isArray(value) ? value : [value]).map((one) => `${name}: ${one}`))];
    remote.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length > 0) remote.write(head);
    const end = (): void => {
      socket.destroy();
      remote.destroy();
    };
    socket.on('error', end).on('close', end);
    remote.on('error', end).on('close', end);
    socket.pipe(remote);
    remote.pipe(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(localPort, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}
