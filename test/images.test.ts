/**
 * Integration: the four runtime images built by `kindling images build` (scripts/setup.sh runs it) exist as rootfs
 * directories and Docker images, and their runtimes actually work. Rootfs checks chroot into each directory as
 * root; the rust compile runs in a private mount namespace (`unshare -m`) with /proc mounted (rustc needs
 * /proc/self/exe) and a scratch dir bound on /work, so nothing is left mounted and the rootfs is not written to.
 *
 * KINDLING_IMAGES_DIR overrides the images dir (default /var/lib/kindling/images).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import Dockerode from 'dockerode';
import { DEFAULT_IMAGES_DIR, RECIPE_LABEL, buildImages, listImages, type ImageInfo } from '../src/images/builder.js';
import { IMAGE_RECIPES, IMAGE_SHORT_NAMES, imageRef, recipeHash, type ImageShortName } from '../src/images/recipes.js';
import { skipOrFail } from '../src/executors/test-support.js';

const imagesDir = process.env.KINDLING_IMAGES_DIR ?? DEFAULT_IMAGES_DIR;
const docker = new Dockerode({ socketPath: '/var/run/docker.sock' });
const isRoot = process.getuid?.() === 0;
const CLEAN_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', HOME: '/' };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: CLEAN_ENV, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function rootfs(short: ImageShortName): string {
  return path.join(imagesDir, short, 'rootfs');
}

/** chroot into a rootfs with a clean environment; optionally as nobody. */
function chroot(short: ImageShortName, argv: string[], opts: { asNobody?: boolean } = {}): Promise<Run> {
  const spec = opts.asNobody ? ['--userspec=65534:65534'] : [];
  return run('chroot', [...spec, rootfs(short), ...argv]);
}

function assertRan(r: Run, expectedStdout: string | RegExp, what: string): void {
  assert.equal(r.code, 0, `${what} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  if (typeof expectedStdout === 'string') assert.equal(r.stdout.trim(), expectedStdout, what);
  else assert.match(r.stdout, expectedStdout, what);
}

let infos: ImageInfo[] = [];
/** Why the Docker checks cannot run here (they fail instead where KINDLING_TEST_REQUIRE names docker, as in CI). */
const dockerMissing = await docker.ping().then(
  () => null,
  (error: Error) => skipOrFail('docker', `the Docker engine is not reachable (${error.message}); scripts/setup.sh starts it`),
);
const dockerUp = dockerMissing === null;

before(async () => {
  infos = await listImages({ imagesDir, ...(dockerUp ? { docker } : {}) });
});

describe('runtime images: rootfs directories', () => {
  test('all four rootfs dirs are built from the current recipes', async () => {
    for (const short of IMAGE_SHORT_NAMES) {
      const info = infos.find((i) => i.short === short);
      assert.ok(info, `${short} is listed`);
      assert.equal(
        info.rootfsReady,
        true,
        `${short}: rootfs at ${info.rootfsDir} is not ready (stamp ${info.rootfsRecipeHash ?? 'missing'}, ` +
          `recipe ${info.recipeHash}); run: node bin/kindling.js images build`,
      );
      assert.equal(info.rootfsRecipeHash, recipeHash(IMAGE_RECIPES[short]));
      assert.ok((info.sizeBytes ?? 0) > 10 * 1024 * 1024, `${short} rootfs is implausibly small`);
      for (const dir of ['work', '.kindling', 'tmp']) {
        assert.ok((await fs.stat(path.join(rootfs(short), dir))).isDirectory(), `${short} has /${dir}`);
      }
      const passwd = await fs.readFile(path.join(rootfs(short), 'etc/passwd'), 'utf8');
      assert.match(passwd, /^nobody:x:65534:65534:/m, `${short} has nobody`);
      // Slimmed: no man pages (the build makes an empty man1 for update-alternatives, whose links there point at
      // pages dpkg left out), no apt lists.
      const man1 = await fs.readdir(path.join(rootfs(short), 'usr/share/man/man1'), { withFileTypes: true }).catch(() => []);
      assert.deepEqual(man1.filter((entry) => !entry.isSymbolicLink()).map((entry) => entry.name), [], `${short} has no man pages`);
      const lists = await fs.readdir(path.join(rootfs(short), 'var/lib/apt/lists')).catch(() => []);
      assert.deepEqual(
        lists.filter((n) => n !== 'partial' && n !== 'lock'),
        [],
        `${short} keeps no apt lists`,
      );
    }
  });

  test('a cached re-run builds nothing', async (t) => {
    if (!infos.every((i) => i.rootfsReady)) return t.skip(skipOrFail('sandbox', 'rootfs dirs not built (see the test above)'));
    const results = await buildImages({ imagesDir, ...(dockerUp ? { docker } : {}) });
    assert.deepEqual(
      results.map((r) => [r.short, r.rootfs, r.docker]),
      IMAGE_SHORT_NAMES.map((s) => [s, 'cached', dockerUp ? 'cached' : 'skipped']),
    );
  });

  describe('runtimes work in a chroot', { skip: isRoot ? false : skipOrFail('sandbox', 'chroot needs root') }, () => {
    test('base: bash and coreutils, as root and as nobody', async () => {
      assertRan(await chroot('base', ['bash', '-c', 'echo $((6*7))']), '42', 'bash arithmetic');
      assertRan(await chroot('base', ['id', '-u'], { asNobody: true }), '65534', 'id as nobody');
      assertRan(await chroot('base', ['sh', '-c', 'ls / | wc -l']), /^\d+/, 'ls');
    });

    test("python: Debian's python3 with the stdlib", async () => {
      assertRan(await chroot('python', ['python3', '-c', 'print(1)']), '1', 'python3 print');
      assertRan(
        await chroot('python', ['python3', '-c', 'import sys, sqlite3, ssl, json, zoneinfo; print(sys.version_info[:2])'], {
          asNobody: true,
        }),
        '(3, 11)',
        'python3 stdlib as nobody',
      );
      assertRan(await chroot('python', ['readlink', '-f', '/usr/bin/python3']), '/usr/bin/python3.11', 'python3 path');
    });

    test("node: Debian's nodejs 18", async () => {
      assertRan(await chroot('node', ['node', '-e', 'console.log(1)']), '1', 'node print');
      assertRan(
        await chroot('node', ['node', '-e', 'console.log(process.versions.node.split(".")[0])'], { asNobody: true }),
        '18',
        'node major version',
      );
    });

    test('rust: rustc compiles and links a hello world that runs', async () => {
      const work = await fs.mkdtemp(path.join(os.tmpdir(), 'kindling-rust-'));
      try {
        await fs.writeFile(path.join(work, 'hello.rs'), 'fn main(){println!("hi")}\n');
        const root = rootfs('rust');
        // Private mount namespace: the mounts vanish with the process, nothing to clean up even on a crash.
        const script =
          `mount --bind "$1" "$2/work" && mount -t proc proc "$2/proc" && ` +
          `chroot "$2" sh -c 'cd /work && rustc -O -o hello hello.rs && ./hello'`;
        const r = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', work, root], 120_000);
        assertRan(r, 'hi', 'rustc hello world');
        assert.ok((await fs.stat(path.join(work, 'hello'))).isFile(), 'the binary was written to the bound /work');
        await assert.rejects(fs.stat(path.join(root, 'work', 'hello')), { code: 'ENOENT' }, 'the rootfs stays clean');
        const mounts = await fs.readFile('/proc/self/mountinfo', 'utf8');
        assert.ok(!mounts.includes(root), 'no mount left under the rootfs');
      } finally {
        await fs.rm(work, { recursive: true, force: true });
      }
    });
  });
});

describe('runtime images: Docker', { skip: dockerMissing ?? false }, () => {
  test('all four Docker images exist with the recipe label, PATH and WORKDIR /work', async () => {
    for (const short of IMAGE_SHORT_NAMES) {
      const recipe = IMAGE_RECIPES[short];
      const info = infos.find((i) => i.short === short);
      assert.equal(info?.dockerReady, true, `${imageRef(recipe)} is not built from the current recipe`);
      const img = await docker.getImage(imageRef(recipe)).inspect();
      assert.equal(img.Config.Labels?.[RECIPE_LABEL], recipeHash(recipe));
      assert.equal(img.Config.WorkingDir, '/work');
      assert.ok(img.Config.Env?.some((e) => e.startsWith('PATH=') && e.includes('/usr/bin')));
    }
  });

  test('each Docker image runs its runtime', async () => {
    const cases: Array<[ImageShortName, string[], string]> = [
      ['base', ['bash', '-c', 'echo $((6*7)); pwd'], '42\n/work'],
      ['python', ['python3', '-c', 'print(1)'], '1'],
      ['node', ['node', '-e', 'console.log(process.versions.node.split(".")[0])'], '18'],
      ['rust', ['sh', '-c', 'rustc --version | cut -d" " -f1'], 'rustc'],
    ];
    for (const [short, cmd, expected] of cases) {
      const container = await docker.createContainer({
        Image: imageRef(IMAGE_RECIPES[short]),
        Cmd: cmd,
        Labels: { 'dev.kindling.test': 'images' },
        HostConfig: { NetworkMode: 'none' },
      });
      try {
        await container.start();
        const { StatusCode } = (await container.wait()) as { StatusCode: number };
        const logs = await container.logs({ stdout: true, stderr: true });
        const text = demux(logs);
        assert.equal(StatusCode, 0, `${short}: exit ${StatusCode}: ${text.stderr}`);
        assert.equal(text.stdout.trim(), expected, short);
      } finally {
        await container.remove({ force: true });
      }
    }
  });
});

/** Splits Docker's multiplexed log stream (8-byte frame headers) into stdout and stderr. */
function demux(buf: Buffer): { stdout: string; stderr: string } {
  let stdout = '';
  let stderr = '';
  let off = 0;
  while (off + 8 <= buf.length) {
    const kind = buf[off];
    const len = buf.readUInt32BE(off + 4);
    const chunk = buf.subarray(off + 8, off + 8 + len).toString();
    if (kind === 2) stderr += chunk;
    else stdout += chunk;
    off += 8 + len;
  }
  return { stdout, stderr };
}
