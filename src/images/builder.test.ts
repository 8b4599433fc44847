import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import Dockerode from 'dockerode';
import {
  ImageBuildError,
  buildImages,
  imagePaths,
  listImages,
  mmdebstrapArgs,
  readInstalledPackages,
  safeRemove,
  type BootstrapRequest,
  type Bootstrapper,
  type ImageStamp,
} from './builder.js';
import { IMAGE_RECIPES, recipeHash } from './recipes.js';
import { skipOrFail } from '../executors/test-support.js';

const tmpRoots: string[] = [];
after(async () => {
  for (const d of tmpRoots) await fs.rm(d, { recursive: true, force: true });
});

async function tmpDir(): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'kindling-images-test-'));
  tmpRoots.push(d);
  return d;
}

/** A bootstrapper that writes a tiny but valid root (what the executors rely on) and counts its calls. */
function fakeBootstrap(opts: { fail?: string; noNobody?: boolean } = {}): Bootstrapper & { calls: BootstrapRequest[] } {
  const calls: BootstrapRequest[] = [];
  const fn = async (req: BootstrapRequest): Promise<void> => {
    calls.push(req);
    const d = req.targetDir;
    for (const sub of ['etc', 'tmp', 'work', '.kindling', 'var/lib/dpkg', 'usr/bin']) {
      await fs.mkdir(path.join(d, sub), { recursive: true });
    }
    if (opts.fail) throw new Error(opts.fail);
    await fs.writeFile(
      path.join(d, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/bash\n' + (opts.noNobody ? '' : 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n'),
    );
    await fs.writeFile(path.join(d, 'usr/bin/hello'), `${req.recipe.short}\n`);
    await fs.writeFile(
      path.join(d, 'var/lib/dpkg/status'),
      [
        'Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b7\n',
        'Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n',
        ...req.recipe.packages.map((p) => `Package: ${p}\nStatus: install ok installed\nVersion: 9.9-${p}\n`),
      ].join('\n'),
    );
  };
  return Object.assign(fn, { calls });
}

async function readStamp(imagesDir: string, short: 'base' | 'python' | 'node' | 'rust'): Promise<ImageStamp> {
  return JSON.parse(await fs.readFile(imagePaths(imagesDir, short).stampFile, 'utf8')) as ImageStamp;
}

test('builds a rootfs, stamps it last, and skips it the second time', async () => {
  const imagesDir = await tmpDir();
  const bootstrap = fakeBootstrap();
  const first = await buildImages({ imagesDir, names: ['python', 'base'], bootstrap });
  assert.deepEqual(
    first.map((r) => [r.short, r.rootfs, r.docker, r.ext4]),
    [
      ['base', 'built', 'skipped', 'skipped'],
      ['python', 'built', 'skipped', 'skipped'],
    ],
  );
  assert.equal(bootstrap.calls.length, 2);
  const p = imagePaths(imagesDir, 'python');
  assert.equal(await fs.readFile(path.join(p.rootfsDir, 'usr/bin/hello'), 'utf8'), 'python\n');
  const stamp = await readStamp(imagesDir, 'python');
  assert.equal(stamp.recipeHash, recipeHash(IMAGE_RECIPES.python));
  assert.equal(stamp.packages.python3, '9.9-python3');
  assert.equal(stamp.packages.gone, undefined);
  assert.ok(stamp.sizeBytes > 0);
  // Nothing but rootfs/ and recipe.json is left in the image dir (no temp dirs, no lock).
  assert.deepEqual((await fs.readdir(p.dir)).sort(), ['recipe.json', 'rootfs']);

  const second = await buildImages({ imagesDir, names: ['base', 'python'], bootstrap });
  assert.deepEqual(
    second.map((r) => r.rootfs),
    ['cached', 'cached'],
  );
  assert.equal(bootstrap.calls.length, 2, 'a cached image must not be bootstrapped again');

  const forced = await buildImages({ imagesDir, names: ['python'], force: true, bootstrap });
  assert.equal(forced[0]?.rootfs, 'built');
  assert.equal(bootstrap.calls.length, 3);
});

test('a stale stamp (different recipe hash) or a missing rootfs triggers a rebuild', async () => {
  const imagesDir = await tmpDir();
  const bootstrap = fakeBootstrap();
  await buildImages({ imagesDir, names: ['node'], bootstrap });
  const p = imagePaths(imagesDir, 'node');
  const stamp = await readStamp(imagesDir, 'node');
  await fs.writeFile(p.stampFile, JSON.stringify({ ...stamp, recipeHash: 'old' }));
  assert.equal((await buildImages({ imagesDir, names: ['node'], bootstrap }))[0]?.rootfs, 'built');
  await fs.rm(p.rootfsDir, { recursive: true });
  assert.equal((await buildImages({ imagesDir, names: ['node'], bootstrap }))[0]?.rootfs, 'built');
  assert.equal(bootstrap.calls.length, 3);
  assert.equal((await readStamp(imagesDir, 'node')).recipeHash, recipeHash(IMAGE_RECIPES.node));
});

test('a failed rebuild keeps the previous rootfs and stamp and leaves no temp dir behind', async () => {
  const imagesDir = await tmpDir();
  await buildImages({ imagesDir, names: ['rust'], bootstrap: fakeBootstrap() });
  const before = await readStamp(imagesDir, 'rust');
  const failing = fakeBootstrap({ fail: 'mirror unreachable' });
  await assert.rejects(
    buildImages({ imagesDir, names: ['rust'], force: true, bootstrap: failing }),
    (e: unknown) =>
      e instanceof ImageBuildError &&
      /rust: mirror unreachable/.test(e.message) &&
      e.results[0]?.rootfs === 'failed' &&
      e.results[0]?.error?.message === 'mirror unreachable',
  );
  const p = imagePaths(imagesDir, 'rust');
  assert.deepEqual(await readStamp(imagesDir, 'rust'), before);
  assert.deepEqual((await fs.readdir(p.dir)).sort(), ['recipe.json', 'rootfs']);
});

test('a root without nobody (uid 65534) is never stamped; other images still build', async () => {
  const imagesDir = await tmpDir();
  const bad = fakeBootstrap({ noNobody: true });
  const good = fakeBootstrap();
  const bootstrap: Bootstrapper = (req) => (req.recipe.short === 'base' ? bad(req) : good(req));
  const err = await buildImages({ imagesDir, names: ['base', 'python'], bootstrap }).then(
    () => assert.fail('expected a failure'),
    (e: unknown) => e as ImageBuildError,
  );
  assert.ok(err instanceof ImageBuildError);
  assert.match(err.message, /nobody/);
  assert.deepEqual(
    err.results.map((r) => [r.short, r.rootfs]),
    [
      ['base', 'failed'],
      ['python', 'built'],
    ],
  );
  await assert.rejects(fs.stat(imagePaths(imagesDir, 'base').stampFile), { code: 'ENOENT' });
});

test('leftovers of an interrupted build are removed; a live lock holder blocks, a dead one does not', async () => {
  const imagesDir = await tmpDir();
  const p = imagePaths(imagesDir, 'base');
  await fs.mkdir(path.join(p.dir, '.build-dead/etc'), { recursive: true });
  await fs.writeFile(path.join(p.dir, 'recipe.json.1234.tmp'), '{');

  // A lock held by a live process (our parent) refuses the build.
  await fs.writeFile(p.lockFile, String(process.ppid));
  await assert.rejects(
    buildImages({ imagesDir, names: ['base'], bootstrap: fakeBootstrap() }),
    /being built by another process/,
  );
  // A lock left by a dead process is taken over.
  const dead = spawnSync('true');
  await fs.writeFile(p.lockFile, String(dead.pid));
  const r = await buildImages({ imagesDir, names: ['base'], bootstrap: fakeBootstrap() });
  assert.equal(r[0]?.rootfs, 'built');
  assert.deepEqual((await fs.readdir(p.dir)).sort(), ['recipe.json', 'rootfs']);
});

test('an unreachable Docker engine still builds rootfs dirs and says so', async () => {
  const imagesDir = await tmpDir();
  const warnings: string[] = [];
  const docker = new Dockerode({ socketPath: path.join(imagesDir, 'no-such-docker.sock') });
  const r = await buildImages({
    imagesDir,
    names: ['base'],
    docker,
    bootstrap: fakeBootstrap(),
    log: { info: () => {}, warn: (m) => warnings.push(m) },
  });
  assert.equal(r[0]?.rootfs, 'built');
  assert.equal(r[0]?.docker, 'unreachable');
  assert.equal(r[0]?.dockerImageId, null);
  assert.ok(warnings.some((w) => /docker engine not reachable/.test(w)), warnings.join('\n'));

  const list = await listImages({ imagesDir, docker });
  const base = list.find((i) => i.short === 'base');
  assert.equal(base?.rootfsReady, true);
  assert.equal(base?.dockerReady, false);
  assert.match(base?.dockerError ?? '', /.+/);
  assert.deepEqual(
    list.filter((i) => i.rootfsReady).map((i) => i.short),
    ['base'],
  );
});

test('listImages reports missing and stale images', async () => {
  const imagesDir = await tmpDir();
  await buildImages({ imagesDir, names: ['python'], bootstrap: fakeBootstrap() });
  const p = imagePaths(imagesDir, 'python');
  let py = (await listImages({ imagesDir })).find((i) => i.short === 'python');
  assert.equal(py?.rootfsReady, true);
  assert.equal(py?.rootfsDir, p.rootfsDir);
  assert.deepEqual(py?.packages, { python3: '9.9-python3', 'python3-distutils': '9.9-python3-distutils' });
  const stamp = await readStamp(imagesDir, 'python');
  await fs.writeFile(p.stampFile, JSON.stringify({ ...stamp, recipeHash: 'old' }));
  py = (await listImages({ imagesDir })).find((i) => i.short === 'python');
  assert.equal(py?.rootfsReady, false);
  assert.equal(py?.rootfsRecipeHash, 'old');
  const rust = (await listImages({ imagesDir })).find((i) => i.short === 'rust');
  assert.equal(rust?.rootfsReady, false);
  assert.equal(rust?.sizeBytes, null);
});

test('mmdebstrap gets Debian sources only (never the host sources), the packages and the slimming options', () => {
  const args = mmdebstrapArgs({
    recipe: IMAGE_RECIPES.rust,
    targetDir: '/x/.build-1',
    suite: 'bookworm',
    mirror: 'http://m/debian',
    securityMirror: 'http://m/debian-security',
  });
  assert.ok(args.includes('--variant=minbase'));
  assert.ok(args.includes('--include=rustc,cargo,gcc,libc6-dev'));
  assert.ok(args.includes('--dpkgopt=path-exclude=/usr/share/doc/*'));
  const tail = args.slice(-5);
  assert.deepEqual(tail, [
    'bookworm',
    '/x/.build-1',
    'deb http://m/debian bookworm main',
    'deb http://m/debian bookworm-updates main',
    'deb http://m/debian-security bookworm-security main',
  ]);
  const hook = args.find((a) => a.startsWith('--customize-hook='));
  assert.match(hook ?? '', /mkdir -p "\$1\/work" "\$1\/.kindling"/);
  assert.match(hook ?? '', /rustc/);
  const base = mmdebstrapArgs({ recipe: IMAGE_RECIPES.base, targetDir: '/t', suite: 'bookworm', mirror: 'm', securityMirror: 's' });
  assert.ok(!base.some((a) => a.startsWith('--include=')), 'an empty include list is omitted');
});

test("an npm binary is extracted from its verified tarball into the root before the recipe's check runs it", () => {
  const binary = IMAGE_RECIPES.deno.npmBinaries?.[0];
  assert.ok(binary !== undefined);
  const args = mmdebstrapArgs({ recipe: IMAGE_RECIPES.deno, targetDir: '/t', suite: 'bookworm', mirror: 'm', securityMirror: 's', binaries: [{ binary, tarball: "/images/.downloads/ab'c.tgz" }] });
  const hook = args.find((a) => a.startsWith('--customize-hook=')) ?? '';
  const extract = hook.indexOf(`tar -xzOf '/images/.downloads/ab'\\''c.tgz' 'package/deno' > "$1"'/usr/local/bin/deno'`);
  assert.ok(extract > 0, hook);
  assert.ok(hook.indexOf(`chmod 0755 "$1"'/usr/local/bin/deno'`) > extract);
  assert.ok(hook.indexOf('chroot "$1"') > extract, 'the check runs after the extraction');
});

test('readInstalledPackages skips removed packages and tolerates a missing status file', async () => {
  const d = await tmpDir();
  assert.deepEqual(await readInstalledPackages(d), {});
  await fs.mkdir(path.join(d, 'var/lib/dpkg'), { recursive: true });
  await fs.writeFile(
    path.join(d, 'var/lib/dpkg/status'),
    'Package: b\nStatus: install ok installed\nVersion: 2\n\nPackage: a\nStatus: install ok installed\nVersion: 1:1.0\n\nPackage: c\nStatus: purge ok not-installed\n',
  );
  assert.deepEqual(await readInstalledPackages(d), { a: '1:1.0', b: '2' });
});

test('safeRemove unmounts what is mounted below the target before deleting, never deleting through it', async (t) => {
  if (process.getuid?.() !== 0) return t.skip(skipOrFail('sandbox', 'needs root to mount a tmpfs'));
  const d = await tmpDir();
  const target = path.join(d, 'root');
  const mnt = path.join(target, 'proc');
  await fs.mkdir(mnt, { recursive: true });
  const m = spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', mnt]);
  if (m.status !== 0) return t.skip(skipOrFail('sandbox', `cannot mount tmpfs here: ${m.stderr.toString().trim()}`));
  await fs.writeFile(path.join(mnt, 'keep'), 'x');
  await safeRemove(target);
  await assert.rejects(fs.stat(target), { code: 'ENOENT' });
  assert.doesNotMatch(await fs.readFile('/proc/self/mountinfo', 'utf8'), new RegExp(mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
});

test('ext4: true writes a clean ext4 image of the rootfs, cached on the next run', async (t) => {
  if (spawnSync('mkfs.ext4', ['-V']).error) return t.skip(skipOrFail('microvm', 'mkfs.ext4 not installed (e2fsprogs)'));
  const imagesDir = await tmpDir();
  const first = await buildImages({ imagesDir, names: ['base'], ext4: true, bootstrap: fakeBootstrap() });
  assert.equal(first[0]?.ext4, 'built');
  const p = imagePaths(imagesDir, 'base');
  const fsck = spawnSync('e2fsck', ['-fn', p.ext4File]);
  assert.equal(fsck.status, 0, fsck.stdout.toString() + fsck.stderr.toString());
  const cat = spawnSync('debugfs', ['-R', 'cat /usr/bin/hello', p.ext4File]);
  assert.equal(cat.stdout.toString(), 'base\n');
  const stamp = await readStamp(imagesDir, 'base');
  assert.equal(stamp.ext4?.recipeHash, recipeHash(IMAGE_RECIPES.base));
  assert.equal(stamp.ext4?.sizeBytes, (await fs.stat(p.ext4File)).size);
  const second = await buildImages({ imagesDir, names: ['base'], ext4: true, bootstrap: fakeBootstrap() });
  assert.equal(second[0]?.ext4, 'cached');
  assert.deepEqual((await fs.readdir(p.dir)).sort(), ['recipe.json', 'rootfs', 'rootfs.ext4']);
  const list = await listImages({ imagesDir });
  assert.equal(list.find((i) => i.short === 'base')?.ext4File, p.ext4File);
});
