/**
 * Fuzz-style bad input against a real server: a few thousand malformed requests across every route (bad JSON, wrong
 * types, huge headers, invalid names, unicode edge cases, negative numbers, path traversal in names, wrong content
 * types, random bytes). Every answer must be a 4xx with the contract's error shape {error:{code,message},requestId},
 * and the server must stay healthy. Seeded, so a failure can be replayed (KINDLING_FUZZ_SEED).
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { seededRandom } from '../src/core/seeded-random.js';

const SEED = Number(process.env.KINDLING_FUZZ_SEED ?? Date.now() % 1_000_000);
const COUNT = 3000;

interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer | string;
  what: string;
}

const WEIRD_STRINGS = [
  '', ' ', '\u0000', '\uFEFF', '\u202E', '\uD800', '\uDFFF', 'é', 'e\u0301', '🔥'.repeat(100), 'ǅ', '\u2028', 'Ａ', 'x'.repeat(10_000),
  '../../etc/passwd', '..%2F..%2Fetc', '%00', '%', '%ZZ', '/', '\\', "'; DROP TABLE functions; --", '<script>', '${PATH}', '$(id)', 'CON', 'a b',
];
const BAD_NUMBERS: unknown[] = [-1, -0.5, 0, 1e308, -1e308, 1.5, 2 ** 53 + 1, '10', null, true, [], {}, 'NaN'];

/** Percent-encodes UTF-8 bytes (lone surrogates become U+FFFD, as a client would send them). */
function pct(text: string, keep = /[A-Za-z0-9_.~-]/): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += byte < 0x80 && keep.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export function generate(next: () => number): FuzzRequest {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)]!;
  const json = { 'content-type': 'application/json' };
  const kind = Math.floor(next() * 13);
  switch (kind) {
    case 0: {
      const bodies = ['{', '{"runtime":', '[', 'null', '"x"', '{"a":1,}', '{\'a\':1}', '\u0000', '{"runtime":"python","code":"1"', 'NaN', '{}{}', '\uFEFF{'];
      return { method: 'POST', path: pick(['/v1/execute', '/v1/functions/fz/invoke']), headers: json, body: pick(bodies), what: 'bad JSON' };
    }
    case 1: {
      const field = pick(['timeoutMs', 'memoryMb', 'cpus', 'pids', 'outputBytes', 'diskMb']);
      // Only values outside the field's range or type (cpus may be fractional, outputBytes may be 0).
      const bounds: Record<string, [number, number, boolean]> = { timeoutMs: [1, 900_000, true], memoryMb: [16, 16_384, true], cpus: [0.05, 64, false], pids: [8, 32_768, true], outputBytes: [0, 104_857_600, true], diskMb: [1, 16_384, true] };
      const [min, max, whole] = bounds[field]!;
      const value = pick(BAD_NUMBERS.filter((v) => !(typeof v === 'number' && v >= min && v <= max && (!whole || Number.isInteger(v)))));
      return { method: 'POST', path: '/v1/execute', headers: json, body: JSON.stringify({ runtime: 'python', code: '1', [field]: value }), what: `bad ${field}` };
    }
    case 2: {
      const body = pick([
        { runtime: pick(BAD_NUMBERS), code: '1' },
        { runtime: 'python', code: pick([1, null, [], {}, true]) },
        { image: pick(WEIRD_STRINGS), command: pick([[], 'ls', [1], null]) },
        { runtime: 'python', code: '1', env: pick([{ '': 'x' }, { '1A': 'x' }, { 'A=B': 'x' }, { A: 1 }, 'x', [], { 'é': 'x' }]) },
        { runtime: 'python', code: '1', workdir: pick(['relative', '/work/../etc', '/', '/proc', '', '/tmp/', 5, '/a/b']) },
        { runtime: 'python', code: '1', network: pick(['bridge', 'host', '', 1, null]) },
        { runtime: 'python', code: '1', executor: pick(WEIRD_STRINGS) },
        { runtime: 'python', code: '1', stdinBase64: 5 },
        { runtime: 'python', code: '1', outputEncoding: pick(['hex', '', 1]) },
        { [pick(WEIRD_STRINGS)]: 1, runtime: 'python', code: '1' },
      ]);
      return { method: 'POST', path: '/v1/execute', headers: json, body: JSON.stringify(body), what: 'wrong types' };
    }
    case 3: {
      const name = pick(WEIRD_STRINGS.filter((s) => s !== '' && s !== '/')) + pick(['', '/..', '%2e%2e', '/invoke/x']);
      const path = `/v1/functions/${next() < 0.5 ? pct(name) : pct(name, /[\x21-\x7e]/)}`;
      return { method: pick(['GET', 'PUT', 'DELETE']), path, headers: json, body: JSON.stringify({ runtime: 'python', code: '1' }), what: 'invalid function name' };
    }
    case 4: {
      const name = pick(['-bad', 'UPPER', 'a'.repeat(200), 'ok.name', 'x_y', '..', '.', 'a/b', 'a%2Fb', 'é']);
      return { method: 'PUT', path: `/v1/functions/${pct(name)}`, headers: json, body: JSON.stringify({ runtime: 'python', code: 'x' }), what: 'bad name on deploy' };
    }
    case 5: {
      const body = pick([{}, { runtime: 'cobol', code: 'x' }, { runtime: 'python' }, { code: 'x' }, { runtime: 'python', code: 'x', maxConcurrency: -1 }, { runtime: 'python', code: 'x', handler: 5 }, { runtime: 'python', code: 'x', minWarm: 1e9 }, []]);
      return { method: 'PUT', path: '/v1/functions/fuzz-fn', headers: json, body: JSON.stringify(body), what: 'bad function spec' };
    }
    case 6: {
      const ct = pick(['text/plain', 'text/xml', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonx', 'image/png', '']);
      return { method: 'POST', path: pick(['/v1/execute', '/v1/functions/fuzz-none/invoke']), headers: ct === '' ? {} : { 'content-type': ct }, body: 'runtime=python', what: `content type ${ct}` };
    }
    case 7: {
      const size = pick([9_000, 20_000, 60_000]);
      return { method: pick(['GET', 'POST']), path: pick(['/v1/execute', '/v1/functions', '/healthz-nope']), headers: { ...json, 'x-fuzz': 'a'.repeat(size) }, body: '{', what: `huge header ${size}` };
    }
    case 8: {
      const paths = ['/v1/nope', '/v2/execute', '/v1/execute/../functions', '/%', '/v1/functions/a/b/c', '/v1/functions/a/invoke/b', '/' + 'x'.repeat(5000), '/v1/%ff%fe', '/v1//functions'];
      return { method: pick(['GET', 'POST', 'PATCH', 'DELETE', 'OPTIONS']), path: pick(paths), headers: json, body: '{}', what: 'unknown route' };
    }
    case 9:
      return { method: pick(['PATCH', 'DELETE', 'PUT']), path: pick(['/v1/execute', '/v1/functions']), headers: json, body: '{}', what: 'wrong method' };
    case 10: {
      const spec = pick(['{', 'null', '{"runtime":"cobol","code":"x"}', '{"runtime":"python"}', '%%%', '{"timeoutMs":-5,"runtime":"bash","code":"x"}']);
      return { method: 'POST', path: '/v1/execute', headers: { 'content-type': 'application/octet-stream', 'x-kindling-spec': spec }, body: Buffer.from('data'), what: 'raw mode with a bad spec' };
    }
    case 11: {
      // Tenant routes with names or quotas that are never valid (a valid creation would turn auth on for the rest).
      const badNames = ['', 'A', '../default', '..', 'a_b', '-a', 'x'.repeat(64), 'é', 'default/keys', '%00', 'a b', '\u202e'];
      const name = pick(badNames);
      const badQuota = { [pick(['maxConcurrency', 'requestsPerSecond', 'burst', 'maxMemoryMb', 'maxPids', 'nope'])]: pick(BAD_NUMBERS.filter((value) => value !== null && value !== 1.5)) };
      const variants: FuzzRequest[] = [
        { method: 'POST', path: '/v1/tenants', headers: json, body: JSON.stringify({ name }), what: 'bad tenant name' },
        { method: 'POST', path: '/v1/tenants', headers: json, body: JSON.stringify({ name: 'fuzz-ok', quotas: badQuota }), what: 'bad quota' },
        { method: pick(['GET', 'DELETE', 'PATCH']), path: `/v1/tenants/${pct(name)}`, headers: json, body: JSON.stringify({ quotas: {} }), what: 'unknown tenant' },
        { method: pick(['POST', 'GET']), path: `/v1/tenants/${pct(name)}/keys`, headers: json, body: '{}', what: 'keys of an unknown tenant' },
        { method: 'DELETE', path: `/v1/tenants/default/keys/${pct(name || 'k')}`, headers: json, body: '{}', what: 'unknown key' },
        { method: 'GET', path: '/v1/functions', headers: { ...json, 'x-kindling-tenant': pct(name) || 'nobody' }, body: '{}', what: 'acting as an unknown tenant' },
      ];
      return pick(variants);
    }
    default: {
      const bytes = Buffer.alloc(1 + Math.floor(next() * 2000));
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(next() * 256);
      return { method: 'POST', path: pick(['/v1/execute', '/v1/functions/fz/invoke']), headers: json, body: bytes, what: 'random bytes as JSON' };
    }
  }
}

interface Answer {
  status: number;
  body: string;
}

function send(base: URL, req: FuzzRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const r = request(
      { host: base.hostname, port: base.port, method: req.method, path: req.path, headers: { ...req.headers, connection: 'close' }, timeout: 30_000, maxHeaderSize: 1 << 20, insecureHTTPParser: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    r.on('timeout', () => r.destroy(new Error('timed out')));
    r.on('error', reject);
    r.end(req.body);
  });
}

/** A request the HTTP parser itself rejects, sent over a plain socket. */
function sendRaw(base: URL, bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(Number(base.port), base.hostname);
    const chunks: Buffer[] = [];
    socket.setTimeout(10_000, () => socket.destroy(new Error('timed out')));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', (e) => (chunks.length > 0 ? resolve(Buffer.concat(chunks).toString('latin1')) : reject(e)));
    socket.end(bytes);
  });
}

function assertErrorShape(answer: Answer, what: string): void {
  assert.ok(answer.status >= 400 && answer.status < 500, `${what}: status ${answer.status} ${answer.body.slice(0, 300)}`);
  let parsed: { error?: { code?: unknown; message?: unknown }; requestId?: unknown };
  try {
    parsed = JSON.parse(answer.body) as typeof parsed;
  } catch {
    assert.fail(`${what}: ${answer.status} body is not JSON: ${answer.body.slice(0, 200)}`);
  }
  assert.equal(typeof parsed.error?.code, 'string', `${what}: ${answer.body.slice(0, 200)}`);
  assert.ok(typeof parsed.error?.message === 'string' && parsed.error.message.length > 0, `${what}: ${answer.body.slice(0, 200)}`);
  assert.equal(typeof parsed.requestId, 'string', `${what}: ${answer.body.slice(0, 200)}`);
}

const unavailable = await sandboxUnavailableReason();

describe('fuzz: malformed requests', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', maxBodyBytes: 1024 * 1024 });
  });
  after(async () => {
    await server?.stop();
  });

  it(`${COUNT} malformed requests (seed ${SEED}): every answer a 4xx with the error shape, the server healthy`, async () => {
    const base = new URL(server.url);
    const next = seededRandom(SEED);
    const failures: string[] = [];
    const byStatus = new Map<number, number>();
    const concurrency = 8;
    let sent = 0;
    const worker = async (): Promise<void> => {
      while (sent < COUNT) {
        const i = sent++;
        const req = generate(next);
        try {
          const answer = await send(base, req);
          byStatus.set(answer.status, (byStatus.get(answer.status) ?? 0) + 1);
          assertErrorShape(answer, `#${i} ${req.what} ${req.method} ${req.path.slice(0, 80)}`);
        } catch (error) {
          const first = (error as Error).message.split('\n')[0]!.slice(0, 300);
          const message = first.startsWith('#') ? first : `${req.what} ${req.method} ${req.path.slice(0, 60)}: ${first}`;
          if (!failures.includes(message)) failures.push(message);
        }
        if (i % 500 === 0) {
          const health = await fetch(`${server.url}/healthz`);
          assert.equal(health.status, 200, `healthz after ${i} requests`);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    console.log(`[fuzz] seed ${SEED}: ${COUNT} requests, statuses ${JSON.stringify(Object.fromEntries([...byStatus].sort()))}, failures ${failures.length}`);
    assert.deepEqual(failures.slice(0, 30), [], `${failures.length} distinct bad answers`);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    const ok = await fetch(`${server.url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', code: 'print("fine")' }) });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { stdout: string }).stdout, 'fine\n');
  });

  it('requests the HTTP parser rejects get a 4xx (and never take the server down)', async () => {
    const base = new URL(server.url);
    const next = seededRandom(SEED + 1);
    const raws = [
      Buffer.from('GARBAGE\r\n\r\n'),
      Buffer.from('GET / HTTP/9.9\r\n\r\n'),
      Buffer.from(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(200_000)}\r\n\r\n`),
      Buffer.from('POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n'),
      Buffer.from('POST /v1/execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nzz\r\n'),
      Buffer.from('GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n'),
    ];
    for (let i = 0; i < 50; i++) {
      const b = Buffer.alloc(1 + Math.floor(next() * 500));
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(next() * 256);
      raws.push(b);
    }
    for (const raw of raws) {
      const text = await sendRaw(base, raw);
      if (text === '') continue; // the connection was closed without an answer: allowed for non-HTTP bytes
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1]);
      assert.ok(status >= 400 && status < 500, `${JSON.stringify(raw.toString('latin1').slice(0, 60))} -> ${text.slice(0, 200)}`);
    }
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
  });
});
