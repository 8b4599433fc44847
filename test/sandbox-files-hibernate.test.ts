/**
 * Hibernation (files-only path), setTimeout, list filters, mkdir, tar upload/download and streamed file uploads of
 * persistent sandboxes on the sandbox executor (real bubblewrap), through the TypeScript SDK against a started server.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ConflictError, Kindling, ValidationError } from '@kindling/sdk';
import { series } from './helpers/prom-text.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const ADMIN = 'admin-key-for-sandbox-files-hibernate-0123456789';

/** Host pids whose command line holds `marker`. */
function processesWith(marker: string): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes(marker) && !line.includes('ps -eo'))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

const CLI = new URL('../src/main.js', import.meta.url).pathname;

/** Runs the CLI with a clean environment; resolves with stdout/stderr/exit code. */
async function cli(args: string[], env: Record<string, string>): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('node', [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env } });
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const failed = error as { stdout: string; stderr: string; code: number };
    return { stdout: failed.stdout, stderr: failed.stderr, code: failed.code };
  }
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

describe('sandbox files (mkdir, tar, streams), hibernation, timeout and filters (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  let apiKey: string;
  const hostDirs: string[] = [];

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN });
    apiKey = (await new Kindling({ url: server.url, apiKey: ADMIN }).tenants.create('sbx-files')).apiKey;
    client = new Kindling({ url: server.url, apiKey });
  });
  after(async () => {
    await server?.stop();
    for (const dir of hostDirs) await rm(dir, { recursive: true, force: true });
  });

  const hostDir = async (): Promise<string> => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-tar-host-'));
    hostDirs.push(dir);
    return dir;
  };

  test('mkdir, and a directory round trip through tar both ways; links are kept as links, never followed', async () => {
    const sb = await client.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 32 } });
    try {
      assert.equal(await sb.files.makeDir('a/b/c'), true);
      assert.equal(await sb.files.makeDir('a/b/c'), false, 'an existing directory is fine');
      await assert.rejects(client.sandboxes.mkdir(sb.id, 'x/y', { parents: false }), (error: unknown) => {
        const { code, message, details } = error as { code?: string; message: string; details?: Record<string, unknown> };
        // The missing parent is named, with the way out.
        return code === 'SANDBOX_FILE_NOT_FOUND' && /parent directory \/work\/x does not exist.*parents: true/.test(message) && details?.parent === '/work/x';
      });
      await sb.files.write('a/file', 'f');
      await assert.rejects(sb.files.makeDir('a/file'), (error: unknown) => error instanceof ValidationError && /not a directory/.test(error.message));
      assert.equal((await sb.commands.run(['test', '-d', '/work/a/b/c'])).exitCode, 0);

      const src = await hostDir();
      await mkdir(join(src, 'deep', 'er'), { recursive: true });
      await writeFile(join(src, 'deep', 'er', 'data.bin'), Buffer.alloc(300_000, 7));
      await writeFile(join(src, 'top.txt'), 'top');
      await symlink('top.txt', join(src, 'link'));
      const archive = execFileSync('tar', ['-C', src, '-cf', '-', '.']);
      const written = await sb.files.uploadDir('up', Readable.from([archive.subarray(0, 1000), archive.subarray(1000)]));
      assert.equal(written.path, '/work/up');
      assert.equal(written.bytes, 300_003);
      const seen = await sb.commands.run(['sh', '-c', 'cd up && wc -c < deep/er/data.bin && readlink link && cat link && ls -a']);
      assert.equal(seen.stdout, '300000\ntop.txt\ntop.\n..\ndeep\nlink\ntop.txt\n', 'extracted, no staging dir left');

      // A symlink planted in the sandbox pointing at the host's /etc comes back as a link: its target is not read.
      await sb.commands.run(['sh', '-c', 'ln -s /etc/hostname up/planted']);
      const back = await hostDir();
      execFileSync('tar', ['-C', back, '-xf', '-'], { input: await readAll(await sb.files.downloadDir('up')) });
      assert.equal(execFileSync('readlink', [join(back, 'planted')], { encoding: 'utf8' }).trim(), '/etc/hostname');
      assert.equal(execFileSync('sha256sum', [join(back, 'deep', 'er', 'data.bin')], { encoding: 'utf8' }).split(' ')[0], createHash('sha256').update(Buffer.alloc(300_000, 7)).digest('hex'));
      await assert.rejects(sb.files.downloadDir('up/top.txt'), (error: unknown) => error instanceof ValidationError);
      await assert.rejects(sb.files.downloadDir('nope'), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_FILE_NOT_FOUND');
    } finally {
      await sb.kill();
    }
  });

  test('an unsafe or broken tar is refused with SANDBOX_TAR_INVALID and changes nothing', async () => {
    const sb = await client.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 16 } });
    try {
      await sb.files.write('target/kept.txt', 'kept');
      const src = await hostDir();
      await writeFile(join(src, 'first.txt'), 'first');
      await symlink('/etc', join(src, 'escape'));
      // first.txt comes before the bad link: it must not be left behind either.
      const bad = execFileSync('tar', ['-C', src, '-cf', '-', 'first.txt', 'escape']);
      await assert.rejects(sb.files.uploadDir('target', bad), (error: unknown) => error instanceof ValidationError && (error as { code?: string }).code === 'SANDBOX_TAR_INVALID' && /symlink to "\/etc"/.test(error.message));
      const absolute = execFileSync('tar', ['-P', '-cf', '-', join(src, 'first.txt')]);
      await assert.rejects(sb.files.uploadDir('target', absolute), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_TAR_INVALID' && /absolute/.test((error as Error).message));
      await assert.rejects(sb.files.uploadDir('target', Buffer.from('definitely not a tar archive'.repeat(40))), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_TAR_INVALID');
      const listing = await sb.commands.run(['ls', '-a', '/work/target']);
      assert.equal(listing.stdout, '.\n..\nkept.txt\n', 'nothing extracted and no staging dir left');
      // Under the request cap (diskMb) but more than the disk has left (8 MiB of it already used): 413, nothing kept.
      await sb.files.write('filler.bin', Buffer.alloc(8 * 1024 * 1024, 2));
      const big = await hostDir();
      await writeFile(join(big, 'big.bin'), Buffer.alloc(10 * 1024 * 1024, 1));
      await assert.rejects(sb.files.uploadDir('target', execFileSync('tar', ['-C', big, '-cf', '-', 'big.bin'], { maxBuffer: 64 * 1024 * 1024 })), (error: unknown) => (error as { code?: string }).code === 'SANDBOX_DISK_FULL');
      assert.equal((await sb.commands.run(['ls', '-a', '/work/target'])).stdout, '.\n..\nkept.txt\n');
    } finally {
      await sb.kill();
    }
  });

  test('files.write streams a Node.js Readable, a web ReadableStream and an async generator', async () => {
    const sb = await client.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 64 } });
    try {
      const dir = await hostDir();
      const file = join(dir, 'big.bin');
      const content = Buffer.alloc(24 * 1024 * 1024);
      for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE(i, i);
      await writeFile(file, content);
      const written = await sb.files.write('streamed.bin', createReadStream(file));
      assert.equal(written.size, content.length);
      const sum = await sb.commands.run(['sha256sum', 'streamed.bin']);
      assert.equal(sum.stdout.split(' ')[0], createHash('sha256').update(content).digest('hex'));
      await sb.files.write('web.txt', new Blob(['web ', 'stream']).stream());
      assert.equal(await sb.files.read('web.txt'), 'web stream');
      await sb.files.write('gen.txt', (async function* () {
        yield 'one ';
        yield new TextEncoder().encode('two');
      })());
      assert.equal(await sb.files.read('gen.txt'), 'one two');
    } finally {
      await sb.kill();
    }
  });

  test('setTimeout moves the end of life from now; list filters by state and metadata', async () => {
    const one = await client.sandboxes.create({ runtime: 'bash', metadata: { team: 'red', run: 'filters' } });
    const two = await client.sandboxes.create({ runtime: 'bash', metadata: { team: 'blue', run: 'filters' } });
    try {
      const before = Date.now();
      await one.setTimeout(600_000);
      assert.ok(Math.abs(Date.parse(one.info.expiresAt) - (before + 600_000)) < 5000, one.info.expiresAt);
      await assert.rejects(one.setTimeout(10), (error: unknown) => error instanceof ValidationError && (error as { code?: string }).code === 'LIMIT_OUT_OF_RANGE');
      const updated = await client.sandboxes.update(one.id, { idleTimeoutMs: 5000 });
      assert.equal(updated.idleTimeoutMs, 5000);
      await two.pause();
      const ids = async (options: Parameters<typeof client.sandboxes.list>[0]): Promise<string[]> => (await client.sandboxes.list(options)).map((s) => s.id).sort();
      assert.deepEqual(await ids({ metadata: { run: 'filters' } }), [one.id, two.id].sort());
      assert.deepEqual(await ids({ metadata: { run: 'filters', team: 'red' } }), [one.id]);
      assert.deepEqual(await ids({ state: 'paused', metadata: { run: 'filters' } }), [two.id]);
      assert.deepEqual(await ids({ metadata: { run: 'nothing' } }), []);
      const tooMany = await fetch(`${server.url}/v1/sandboxes?${Array.from({ length: 17 }, (_, i) => `metadata.k${i}=v`).join('&')}`, { headers: { authorization: `Bearer ${apiKey}` } });
      assert.equal(tooMany.status, 400);
    } finally {
      await one.kill();
      await two.kill();
    }
  });

  test('CLI: cp of directories both ways (tar), mkdir, set-timeout, ls --state --metadata, hibernate', async () => {
    const env = { KINDLING_URL: server.url, KINDLING_API_KEY: apiKey };
    const created = await cli(['sandbox', 'create', '--image', 'kindling/base', '-m', 'via=cli-dir'], env);
    assert.equal(created.code, 0, created.stderr);
    const id = created.stdout.trim();
    try {
      const src = await hostDir();
      await mkdir(join(src, 'sub'), { recursive: true });
      await writeFile(join(src, 'sub', 'a.txt'), 'alpha');
      await writeFile(join(src, 'b.txt'), 'beta');
      const up = await cli(['sandbox', 'cp', src, `${id}:/work/copied`], env);
      assert.equal(up.code, 0, up.stderr);
      assert.match(up.stderr, /9 bytes -> .*:\/work\/copied/);
      assert.equal((await cli(['sandbox', 'exec', id, '--', 'cat', 'copied/sub/a.txt', 'copied/b.txt'], env)).stdout, 'alphabeta');
      const dest = join(await hostDir(), 'out');
      const down = await cli(['sandbox', 'cp', '-r', `${id}:/work/copied`, dest], env);
      assert.equal(down.code, 0, down.stderr);
      assert.equal(execFileSync('cat', [join(dest, 'sub', 'a.txt'), join(dest, 'b.txt')], { encoding: 'utf8' }), 'alphabeta');
      // A directory copied out without -r: refused, saying to add -r.
      const noR = await cli(['sandbox', 'cp', `${id}:/work/copied`, join(await hostDir(), 'flat')], env);
      assert.notEqual(noR.code, 0);
      assert.match(noR.stderr, /is a directory: copy it out with -r \(kindling sandbox cp -r /);
      const noParents = await cli(['sandbox', 'mkdir', id, '/work/zz/q', '--no-parents'], env);
      assert.notEqual(noParents.code, 0);
      assert.match(noParents.stderr, /parent directory \/work\/zz does not exist.*leave out --no-parents/);
      const made = await cli(['sandbox', 'mkdir', id, 'x/y/z'], env);
      assert.deepEqual([made.code, made.stdout], [0, '/work/x/y/z\n']);
      const timeout = await cli(['sandbox', 'set-timeout', id, '120000', '--idle-timeout-ms', '60000'], env);
      assert.equal(timeout.code, 0, timeout.stderr);
      assert.match(timeout.stdout, /idle timeout 60000 ms/);
      const nothing = await cli(['sandbox', 'set-timeout', id], env);
      assert.notEqual(nothing.code, 0);
      assert.match(nothing.stderr, /give the milliseconds/);
      assert.match((await cli(['sandbox', 'ls', '--metadata', 'via=cli-dir'], env)).stdout, new RegExp(`^${id} +running +sandbox +kindling/base `));
      assert.equal((await cli(['sandbox', 'ls', '--metadata', 'via=other'], env)).stdout, '');
      const hibernated = await cli(['sandbox', 'hibernate', id], env);
      assert.equal(hibernated.stdout, `${id} hibernated (files kept; its processes ended)\n`);
      assert.match((await cli(['sandbox', 'ls', '--state', 'hibernated'], env)).stdout, new RegExp(`^${id} +hibernated`, 'm'));
    } finally {
      await cli(['sandbox', 'rm', id], env);
    }
  });

  test('hibernate keeps the files and ends the processes (said plainly); the next command starts a new process tree; it stays hibernated across a restart', async () => {
    const marker = `hib-${process.pid}-${Date.now()}`;
    const sb = await client.sandboxes.create({ image: 'kindling/base', limits: { diskMb: 16 } });
    let restarted: TestServer | null = null;
    try {
      await sb.files.write('keep.txt', 'kept across hibernation');
      await sb.commands.run(['bash', '-c', `(exec -a ${marker} sleep 600 >/dev/null 2>&1 &)`]);
      assert.equal(processesWith(marker).length, 1);
      const info = await sb.hibernate();
      assert.equal(info.state, 'hibernated');
      assert.equal(info.hibernation?.processesKept, false);
      assert.match(info.stopReason ?? '', /processes ended/);
      assert.deepEqual(processesWith(marker), [], 'its processes ended');
      assert.equal((await client.sandboxes.list({ state: 'hibernated' })).some((s) => s.id === sb.id), true);
      // The operator's gauge counts it (it has no live sandbox any more: the count comes from the records).
      const metrics = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } })).text();
      const hibernated = series(metrics, 'kindling_persistent_sandboxes', { tenant: 'sbx-files', state: 'hibernated' });
      assert.ok(hibernated.length === 1 && hibernated[0]! >= 1, `hibernated: ${hibernated.join(', ')}`);
      await assert.rejects(sb.commands.run(['true'], { autoResume: false }), (error: unknown) => error instanceof ConflictError && error.code === 'SANDBOX_PAUSED' && /hibernated/.test(error.message));

      // Across a restart of the server it stays hibernated, then wakes for a command on its files.
      await server.close();
      restarted = await startTestServer({ executor: 'sandbox', adminKey: ADMIN, dataDir: server.dataDir });
      server = restarted;
      const again = new Kindling({ url: server.url, apiKey });
      const after = await again.sandboxes.get(sb.id);
      assert.equal(after.state, 'hibernated');
      // The pattern's own bracket keeps this grep from matching itself.
      const pattern = marker.replace('-', '[-]');
      const woke = await again.sandboxes.run(sb.id, ['sh', '-c', `cat keep.txt; grep -l '${pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l`]);
      assert.equal(woke.stdout, 'kept across hibernation0\n', 'files kept; a new process tree without the old sleep');
      assert.equal((await again.sandboxes.get(sb.id)).state, 'running');
      await again.sandboxes.delete(sb.id);
    } finally {
      await new Kindling({ url: server.url, apiKey }).sandboxes.delete(sb.id).catch(() => {});
    }
  });
});
