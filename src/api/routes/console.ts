import { readFileSync, readdirSync, statSync } from 'node:fs';
import { extname, join, relative, sep } from 'node:path';
import type { FastifyInstance } from 'fastify';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};

/** Every file under `dir`, read once at start-up (a few small files): nothing outside this list is ever served. */
function loadAssets(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (current: string): void => {
    for (const entry of readdirSync(current)) {
      const path = join(current, entry);
      if (statSync(path).isDirectory()) walk(path);
      else files.set(relative(dir, path).split(sep).join('/'), readFileSync(path));
    }
  };
  try {
    walk(dir);
  } catch {
    // not built: `/` says so
  }
  return files;
}

/** Routes the console needs without a key: the page and its assets (they hold no data; the API calls need the key). */
export const CONSOLE_PUBLIC_ROUTES = ['/', '/assets/*'];

/**
 * The web console (web/, built by `npm run build` into web/dist): static files at `/` and `/assets/…`. The page asks
 * for an API key and sends it as `Authorization: Bearer` on every API call, so the data stays behind the same auth.
 */
export function registerConsoleRoutes(app: FastifyInstance, options: { dir: string }): void {
  const assets = loadAssets(options.dir);
  const send = (path: string, reply: import('fastify').FastifyReply) => {
    const body = assets.get(path);
    if (body === undefined) return undefined;
    reply.type(TYPES[extname(path)] ?? 'application/octet-stream');
    // Hashed asset names may be cached for good; the page itself must be revalidated to pick up a new build.
    reply.header('cache-control', path.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache');
    reply.header('content-security-policy', "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'");
    reply.header('x-content-type-options', 'nosniff');
    return reply.send(body);
  };
  app.get('/', { schema: { hide: true } }, async (_request, reply) => {
    const sent = send('index.html', reply);
    if (sent !== undefined) return sent;
    reply.code(503).type('text/plain; charset=utf-8');
    return `The console is not built (no ${join(options.dir, 'index.html')}): run "npm run build".\n`;
  });
  app.get<{ Params: { '*': string } }>('/assets/*', { schema: { hide: true } }, async (request, reply) => {
    const sent = send(`assets/${request.params['*']}`, reply);
    if (sent !== undefined) return sent;
    reply.code(404).type('text/plain; charset=utf-8');
    return 'not found\n';
  });
}
