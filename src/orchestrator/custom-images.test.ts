import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { writeCustomRecord, type CustomImageRecord } from '../images/custom.js';
import { CustomImageService } from './custom-images.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const record = (tenant: string | null, name: string, status: CustomImageRecord['status'] = 'ready'): CustomImageRecord => {
  const short = tenant === null ? `s.${name}` : `u.${tenant}.${name}`;
  return { name, tenant, short, image: `kindling/${short}`, from: 'base', apt: [], files: null, status, error: status === 'failed' ? 'apt failed' : null, recipeHash: 'h', sizeBytes: 1, createdAtMs: 0, finishedAtMs: 1, log: '' };
};

async function serviceWith(records: CustomImageRecord[]): Promise<{ service: CustomImageService; imagesDir: string }> {
  const imagesDir = await mkdtemp(join(tmpdir(), 'kindling-custom-images-'));
  dirs.push(imagesDir);
  for (const r of records) await writeCustomRecord(imagesDir, r);
  const service = new CustomImageService({ imagesDir });
  await service.start();
  return { service, imagesDir };
}

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (error) {
    return (error as KindlingError).code;
  }
  return 'none';
};

test("resolve: a tenant's own image first, then a shared one; built-in and unknown names unchanged", async () => {
  const { service } = await serviceWith([record('acme', 'ml'), record(null, 'ml'), record(null, 'tools')]);
  assert.equal(service.resolve('kindling/ml', 'acme'), 'kindling/u.acme.ml');
  assert.equal(service.resolve('kindling/ml:latest', 'acme'), 'kindling/u.acme.ml');
  assert.equal(service.resolve('kindling/ml', 'other'), 'kindling/s.ml');
  assert.equal(service.resolve('kindling/tools', 'acme'), 'kindling/s.tools');
  assert.equal(service.resolve('kindling/python', 'acme'), 'kindling/python');
  assert.equal(service.resolve('kindling/nothing', 'acme'), 'kindling/nothing');
  assert.equal(service.resolve('alpine:3', 'acme'), 'alpine:3');
  // An internal caller (no tenant) gets shared images only.
  assert.equal(service.resolve('kindling/ml', null), 'kindling/s.ml');
});

test("resolve: a scoped name is the owner's only; an image not built is refused with 409", async () => {
  const { service } = await serviceWith([record('acme', 'ml'), record('acme', 'wip', 'building'), record('acme', 'bad', 'failed')]);
  assert.equal(service.resolve('kindling/u.acme.ml', 'acme'), 'kindling/u.acme.ml');
  assert.equal(code(() => service.resolve('kindling/u.acme.ml', 'other')), 'UNKNOWN_IMAGE');
  // A tag does not hide it (executors that read a rootfs drop the tag).
  assert.equal(code(() => service.resolve('kindling/u.acme.ml:v2', 'other')), 'UNKNOWN_IMAGE');
  // A tenant named like a prefix of another cannot reach it either (the dot ends the tenant name).
  assert.equal(code(() => service.resolve('kindling/u.acme.ml', 'acm')), 'UNKNOWN_IMAGE');
  assert.equal(code(() => service.resolve('kindling/u.acme.ml', null)), 'UNKNOWN_IMAGE');
  // A build the server did not finish is failed after a restart, and refused like any failed image.
  assert.equal(code(() => service.resolve('kindling/wip', 'acme')), 'IMAGE_NOT_READY');
  assert.equal(code(() => service.resolve('kindling/bad', 'acme')), 'IMAGE_NOT_READY');
  assert.equal(service.get({ tenant: 'acme', isAdmin: false }, 'wip').status, 'failed');
});

test('list and get show the caller its own and the shared images; delete of a shared one needs the admin', async () => {
  const { service } = await serviceWith([record('acme', 'ml'), record('other', 'secret'), record(null, 'tools')]);
  const acme = { tenant: 'acme', isAdmin: false };
  assert.deepEqual(service.list(acme).map((image) => [image.name, image.shared]).sort(), [['ml', false], ['tools', true]]);
  assert.equal(code(() => service.get(acme, 'secret')), 'IMAGE_NOT_FOUND');
  await assert.rejects(service.delete(acme, 'tools'), (error: KindlingError) => error.code === 'FORBIDDEN');
  await assert.rejects(service.create(acme, 'x', { from: 'base', shared: true }), (error: KindlingError) => error.code === 'FORBIDDEN');
});

test('the per-tenant limit refuses one more image before anything is written', async () => {
  const { imagesDir } = await serviceWith([record('acme', 'a'), record('acme', 'b')]);
  const limited = new CustomImageService({ imagesDir, maxPerTenant: 2 });
  await limited.start();
  await assert.rejects(limited.create({ tenant: 'acme', isAdmin: false }, 'c', { from: 'base' }), (error: KindlingError) => error.code === 'IMAGE_LIMIT');
  assert.equal((await readdir(imagesDir)).includes('u.acme.c'), false);
});

test("a tenant's maxImageBytes: its images' bytes are counted; with no room left a new image or one for packages is refused before anything is written", async () => {
  const sized = (name: string, sizeBytes: number, tenant = 'acme'): CustomImageRecord => ({ ...record(tenant, name), sizeBytes });
  const { imagesDir } = await serviceWith([sized('a', 600), sized('b', 400), sized('c', 5000, 'other'), { ...record(null, 'shared'), sizeBytes: 7000 }]);
  const quotas: Record<string, number | null> = { acme: 1000, other: null };
  const limited = new CustomImageService({ imagesDir, imageBytesQuotaOf: (tenant) => quotas[tenant] ?? null });
  await limited.start();
  assert.equal(limited.bytesOf('acme'), 1000, "a tenant's images only; shared ones are nobody's");
  assert.equal(limited.bytesOf('other'), 5000);
  const acme = { tenant: 'acme', isAdmin: false };
  const refusal = (error: KindlingError): boolean => {
    assert.equal(error.code, 'TENANT_STORAGE_LIMIT');
    assert.equal(error.statusCode, 409);
    assert.deepEqual(error.details, { quota: 'maxImageBytes', limit: 1000, used: 1000, requested: 0 });
    assert.match(error.message, /kindling images delete/);
    return true;
  };
  await assert.rejects(limited.create(acme, 'd', { from: 'base' }), refusal);
  assert.equal((await readdir(imagesDir)).includes('u.acme.d'), false);
  await assert.rejects(limited.imageForPackages('acme', 'kindling/python', ['python3-yaml'], () => undefined), refusal);
  assert.equal((await readdir(imagesDir)).some((name) => name.startsWith('u.acme.pkgs-')), false);
});

test("a directory without its record is removed at start once it is an hour old, a recent one is left", async () => {
  const imagesDir = await mkdtemp(join(tmpdir(), 'kindling-custom-images-'));
  dirs.push(imagesDir);
  for (const name of ['u.acme.old', 'u.acme.new', 'python']) await mkdir(join(imagesDir, name));
  await writeFile(join(imagesDir, 'u.acme.old', 'files.tar'), 'x');
  const hourAgo = new Date(Date.now() - 2 * 60 * 60_000);
  await utimes(join(imagesDir, 'u.acme.old'), hourAgo, hourAgo);
  await utimes(join(imagesDir, 'python'), hourAgo, hourAgo);
  await new CustomImageService({ imagesDir }).start();
  assert.deepEqual((await readdir(imagesDir)).sort(), ['python', 'u.acme.new']);
});

test('delete takes the record first, so an interrupted delete is finished at the next start, whatever its age', async () => {
  const { service, imagesDir } = await serviceWith([record('acme', 'ml'), record('acme', 'kept')]);
  await service.delete({ tenant: 'acme', isAdmin: false }, 'ml');
  assert.deepEqual((await readdir(imagesDir)).sort(), ['u.acme.kept']);
  // As a delete cut off after renaming the record: the directory is young, and still removed at start.
  await mkdir(join(imagesDir, 'u.acme.cut'));
  await writeFile(join(imagesDir, 'u.acme.cut', 'custom.json.deleted'), '{}');
  await writeFile(join(imagesDir, 'u.acme.cut', 'files.tar'), 'x');
  const restarted = new CustomImageService({ imagesDir });
  await restarted.start();
  assert.deepEqual((await readdir(imagesDir)).sort(), ['u.acme.kept']);
  assert.deepEqual(restarted.list({ tenant: 'acme', isAdmin: false }).map((image) => image.name), ['kept']);
});
