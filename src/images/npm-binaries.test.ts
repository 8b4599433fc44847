import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fetchNpmTarball, integrityHex, tarballUrl } from './npm-binaries.js';
import type { NpmBinary } from './recipes.js';

const GOOD = Buffer.from('a tarball of some bytes');
const integrityOf = (bytes: Buffer): string => `sha512-${createHash('sha512').update(bytes).digest('base64')}`;
const binary = (integrity: string): NpmBinary => ({ package: '@scope/tool-linux', version: '1.2.3', integrity, entry: 'package/tool', target: '/usr/local/bin/tool' });

let server: Server;
let registry: string;
let body = GOOD;
const requests: string[] = [];
before(async () => {
  server = createServer((req, res) => {
    requests.push(req.url ?? '');
    if (req.url !== '/@scope/tool-linux/-/tool-linux-1.2.3.tgz') return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  registry = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});
after(() => server.close());

const cacheDir = async (): Promise<string> => fs.mkdtemp(path.join(os.tmpdir(), 'kindling-npm-bin-'));

test('the tarball URL of a scoped package follows the registry layout', () => {
  assert.equal(tarballUrl('https://registry.npmjs.org/', { package: '@deno/linux-x64-glibc', version: '2.9.6' }), 'https://registry.npmjs.org/@deno/linux-x64-glibc/-/linux-x64-glibc-2.9.6.tgz');
  assert.equal(tarballUrl('http://mirror', { package: 'plain', version: '1.0.0' }), 'http://mirror/plain/-/plain-1.0.0.tgz');
});

test('only an sha512 integrity is accepted', () => {
  assert.equal(integrityHex(integrityOf(GOOD)), createHash('sha512').update(GOOD).digest('hex'));
  assert.throws(() => integrityHex('sha1-abc'), /not an sha512 integrity/);
  assert.throws(() => integrityHex('sha512-short'), /not an sha512 integrity/);
});

test('a download that matches the pinned integrity is kept by its hash and reused without asking again', async () => {
  const dir = await cacheDir();
  body = GOOD;
  requests.length = 0;
  const file = await fetchNpmTarball(binary(integrityOf(GOOD)), { registry, cacheDir: dir });
  assert.deepEqual(await fs.readFile(file), GOOD);
  assert.equal(path.dirname(file), dir);
  assert.equal(await fetchNpmTarball(binary(integrityOf(GOOD)), { registry, cacheDir: dir }), file);
  assert.equal(requests.length, 1, 'the cached tarball was downloaded again');
  await fs.rm(dir, { recursive: true });
});

test('a download that does not match is refused and nothing is kept; a damaged cached file is fetched again', async () => {
  const dir = await cacheDir();
  body = Buffer.from('something else');
  await assert.rejects(fetchNpmTarball(binary(integrityOf(GOOD)), { registry, cacheDir: dir }), /does not match the pinned integrity/);
  assert.deepEqual(await fs.readdir(dir), []);
  // A truncated file under the right name (a crash of another writer) is not trusted.
  body = GOOD;
  await fs.writeFile(path.join(dir, `${integrityHex(integrityOf(GOOD))}.tgz`), GOOD.subarray(0, 5));
  const file = await fetchNpmTarball(binary(integrityOf(GOOD)), { registry, cacheDir: dir });
  assert.deepEqual(await fs.readFile(file), GOOD);
  await fs.rm(dir, { recursive: true });
});

test('a registry error names the URL and status', async () => {
  const dir = await cacheDir();
  await assert.rejects(fetchNpmTarball({ ...binary(integrityOf(GOOD)), version: '9.9.9' }, { registry, cacheDir: dir }), /tool-linux-9\.9\.9\.tgz answered 404/);
  await fs.rm(dir, { recursive: true });
});
