/**
 * The Firecracker driver without KVM: request bodies against Firecracker's published API schema (our transcription in
 * test/fixtures/firecracker-api.json), the vsock CONNECT handshake against a scripted unix socket, and the process
 * lifecycle, snapshot/restore calls and cleanup against a STAND-IN binary (test/fixtures/fake-firecracker.mjs, which
 * runs no VM). Real Firecracker boots need a usable KVM and a firecracker binary; that test skips naming what is missing.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { readAssets } from './assets.js';
import {
  AGENT_VSOCK_PORT,
  FirecrackerApi,
  FirecrackerVm,
  bootRequests,
  connectVsock,
  firecrackerBootArgs,
  firecrackerUnavailable,
  jailerArgs,
  resumeRequest,
  snapshotCreateRequests,
  snapshotLoadRequests,
  type ApiRequest,
  type FirecrackerConfig,
} from './firecracker.js';
import { kvmUsable } from './qemu.js';
import { reapSnapshots, reapVmDirs, trimSnapshots } from './reap.js';
import { skipOrFail } from '../test-support.js';

const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url));
const FAKE = path.join(repoRoot, 'test/fixtures/fake-firecracker.mjs');
const PROTOCOL_URL = pathToFileURL(path.join(repoRoot, 'dist/agent/vm/protocol.js')).href;

interface Schema {
  type?: string;
  required?: string[];
  properties?: Record<string, Schema>;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  $ref?: string;
  oneOfRequired?: string[];
}
const api = JSON.parse(readFileSync(path.join(repoRoot, 'test/fixtures/firecracker-api.json'), 'utf8')) as {
  paths: Record<string, string>;
  definitions: Record<string, Schema>;
};

/** Errors of `value` against `schema` (the subset of JSON Schema the fixture uses; unknown properties are errors). */
function validate(value: unknown, schema: Schema, at = '$'): string[] {
  if (schema.$ref) return validate(value, api.definitions[schema.$ref] as Schema, at);
  const errors: string[] = [];
  const type = Array.isArray(value) ? 'array' : value === null ? 'null' : Number.isInteger(value) ? 'integer' : typeof value;
  if (schema.type && !(schema.type === type || (schema.type === 'number' && type === 'integer'))) return [`${at}: expected ${schema.type}, got ${type}`];
  if (schema.enum && !schema.enum.includes(value)) errors.push(`${at}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${at}: ${value} < ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${at}: ${value} > ${schema.maximum}`);
  }
  if (type === 'object' && schema.properties) {
    const object = value as Record<string, unknown>;
    for (const key of schema.required ?? []) if (!(key in object)) errors.push(`${at}: missing required ${key}`);
    for (const [key, inner] of Object.entries(object)) {
      const property = schema.properties[key];
      if (!property) errors.push(`${at}: unknown property ${key}`);
      else errors.push(...validate(inner, property, `${at}.${key}`));
    }
    if (schema.oneOfRequired && schema.oneOfRequired.filter((key) => key in object).length !== 1) {
      errors.push(`${at}: exactly one of ${schema.oneOfRequired.join(', ')} is required`);
    }
  }
  return errors;
}

/** The schema of a request's route (`/drives/root` matches `/drives/{drive_id}`), or a failure. */
function validateRequest(req: ApiRequest): string[] {
  const route = Object.keys(api.paths).find((key) => {
    const [method, template] = key.split(' ') as [string, string];
    const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`);
    return method === req.method && pattern.test(req.path);
  });
  if (!route) return [`${req.method} ${req.path} is not a documented route`];
  const errors = validate(req.body, api.definitions[api.paths[route] as string] as Schema);
  // Path parameters must match the body's id field.
  if (route === 'PUT /drives/{drive_id}' && req.path !== `/drives/${String(req.body?.drive_id)}`) errors.push('drive_id differs from the path');
  return errors.map((error) => `${req.method} ${req.path}: ${error}`);
}

const shape = { rootImage: '/img/python.ext4', vcpus: 2, memoryMb: 416 };
const config: FirecrackerConfig = { firecrackerBinary: 'firecracker', kernel: '/a/vmlinux', initramfs: '/a/initramfs.cpio', agentDisk: '/a/agent.ext4', bootArgs: firecrackerBootArgs() };

const temps: string[] = [];
async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(temps.map((dir) => rm(dir, { recursive: true, force: true })));
});

describe('firecracker API requests (against the published schema)', () => {
  it('boot, snapshot create/load, pause/resume bodies are valid', () => {
    const all = [...bootRequests(config, shape), ...snapshotCreateRequests('/s/x.vmstate'), ...snapshotLoadRequests('/s/x.vmstate'), resumeRequest];
    for (const req of all) assert.deepEqual(validateRequest(req), [], JSON.stringify(req));
    const boot = bootRequests(config, shape);
    assert.deepEqual(boot.map((req) => `${req.method} ${req.path}`), [
      'PUT /machine-config', 'PUT /boot-source', 'PUT /drives/root', 'PUT /drives/agent', 'PUT /vsock', 'PUT /actions',
    ]);
    // The base image and the agent disk are attached read-only: no VM writes them.
    for (const req of boot.filter((r) => r.path.startsWith('/drives/'))) assert.equal(req.body?.is_read_only, true);
    assert.match(String(boot[1]?.body?.boot_args), /kindling\.transport=vsock/);
    assert.equal(boot[4]?.body?.uds_path, 'vsock.sock', 'relative to the VM dir, so restored clones get their own socket');
  });

  it("bound directories' disks are read-only drives after the agent's, their labels in the boot arguments", () => {
    const withBinds = { ...shape, binds: [{ file: '/b/one.ext4', label: 'kb-one', target: '/work' }] };
    const boot = bootRequests(config, withBinds);
    for (const req of boot) assert.deepEqual(validateRequest(req), [], JSON.stringify(req));
    assert.deepEqual(boot.map((req) => `${req.method} ${req.path}`), [
      'PUT /machine-config', 'PUT /boot-source', 'PUT /drives/root', 'PUT /drives/agent', 'PUT /drives/bind0', 'PUT /vsock', 'PUT /actions',
    ]);
    assert.deepEqual(boot[4]?.body, { drive_id: 'bind0', path_on_host: '/b/one.ext4', is_root_device: false, is_read_only: true });
    assert.match(String(boot[1]?.body?.boot_args), / kindling\.binds=kb-one$/);
  });

  it('the validator itself catches wrong bodies (so the test above means something)', () => {
    assert.match(validateRequest({ method: 'PUT', path: '/machine-config', body: { vcpu_count: 0, mem_size_mib: 128 } }).join(), /0 < 1/);
    assert.match(validateRequest({ method: 'PUT', path: '/machine-config', body: { vcpus: 1, mem_size_mib: 128 } }).join(), /unknown property vcpus/);
    assert.match(validateRequest({ method: 'PUT', path: '/vsock', body: { guest_cid: 2, uds_path: 'x' } }).join(), /2 < 3/);
    assert.match(validateRequest({ method: 'PUT', path: '/actions', body: { action_type: 'Start' } }).join(), /not one of/);
    assert.match(validateRequest({ method: 'PUT', path: '/snapshot/load', body: { snapshot_path: 'a' } }).join(), /exactly one of/);
    assert.match(validateRequest({ method: 'PUT', path: '/snapshot/load', body: { snapshot_path: 'a', mem_backend: { backend_type: 'Disk', backend_path: 'b' } } }).join(), /not one of/);
    assert.match(validateRequest({ method: 'PUT', path: '/drives/a', body: { drive_id: 'b', is_root_device: false } }).join(), /differs/);
    assert.match(validateRequest({ method: 'PUT', path: '/snapshot', body: {} }).join(), /not a documented route/);
  });

  it('builds the jailer command line', () => {
    const args = jailerArgs({ ...config, firecrackerBinary: '/usr/bin/firecracker', jailer: { binary: 'jailer', uid: 123, gid: 456, chrootBaseDir: '/srv/jail' } }, 'kindling-vm-1');
    assert.deepEqual(args, ['--id', 'kindling-vm-1', '--exec-file', '/usr/bin/firecracker', '--uid', '123', '--gid', '456', '--chroot-base-dir', '/srv/jail', '--', '--api-sock', '/api.sock']);
  });
});

describe('firecracker vsock handshake (host side)', () => {
  async function scriptedUds(dir: string, onConnect: (socket: net.Socket, line: string) => void): Promise<{ path: string; close(): Promise<void> }> {
    const file = path.join(dir, `v-${Math.random().toString(36).slice(2)}.sock`);
    const server = net.createServer((socket) => {
      let buffer = '';
      socket.setEncoding('latin1');
      const onData = (chunk: string): void => {
        buffer += chunk;
        const at = buffer.indexOf('\n');
        if (at < 0) return;
        socket.off('data', onData);
        onConnect(socket, buffer.slice(0, at));
      };
      socket.on('data', onData);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(file, resolve));
    return { path: file, close: () => new Promise((resolve) => server.close(() => resolve())) };
  }

  it('sends CONNECT <port>, accepts OK <n>, and hands over bytes that came with the OK line', async () => {
    const dir = await tempDir('kindling-fc-vsock-');
    const seen: string[] = [];
    const uds = await scriptedUds(dir, (socket, line) => {
      seen.push(line);
      socket.write('OK 1073741824\nhello');
      socket.once('data', (data) => socket.end(`echo:${String(data)}`));
    });
    const socket = await connectVsock(uds.path, 52, Date.now() + 5000);
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.resume();
    socket.write('ping');
    await new Promise((resolve) => socket.once('end', resolve));
    assert.deepEqual(seen, ['CONNECT 52']);
    assert.equal(Buffer.concat(received).toString(), 'helloecho:ping');
    socket.destroy();
    await uds.close();
  });

  it('retries while the guest refuses (connection closed) and gives up at the deadline with the reason', async () => {
    const dir = await tempDir('kindling-fc-vsock-');
    let attempts = 0;
    const uds = await scriptedUds(dir, (socket) => {
      attempts++;
      if (attempts < 3) socket.destroy();
      else socket.write('OK 7\n');
    });
    const socket = await connectVsock(uds.path, AGENT_VSOCK_PORT, Date.now() + 5000);
    assert.equal(attempts, 3);
    socket.destroy();
    await uds.close();
    const refusing = await scriptedUds(dir, (socket) => socket.end('NO\n'));
    await assert.rejects(connectVsock(refusing.path, 9, Date.now() + 300), /did not accept: vsock handshake refused: "NO"/);
    await refusing.close();
    await assert.rejects(connectVsock(path.join(dir, 'absent.sock'), 9, Date.now() + 100), /did not accept/);
  });
});

describe('firecracker driver lifecycle with a STAND-IN binary (fake-firecracker.mjs, no VM)', () => {
  async function setup(): Promise<{ dir: string; fcConfig: FirecrackerConfig; binary: string }> {
    const dir = await tempDir('kindling-fc-fake-');
    // The stand-in needs the protocol module: a wrapper script passes it (spawn gets no env override from the driver).
    const binary = path.join(dir, 'fake-firecracker');
    writeFileSync(binary, `#!/bin/sh\nFAKE_FC_PROTOCOL='${PROTOCOL_URL}' exec '${process.execPath}' '${FAKE}' "$@"\n`);
    chmodSync(binary, 0o755);
    for (const name of ['vmlinux', 'initramfs.cpio', 'agent.ext4', 'root.ext4']) await writeFile(path.join(dir, name), name);
    const fcConfig: FirecrackerConfig = {
      firecrackerBinary: binary,
      kernel: path.join(dir, 'vmlinux'),
      initramfs: path.join(dir, 'initramfs.cpio'),
      agentDisk: path.join(dir, 'agent.ext4'),
      bootArgs: firecrackerBootArgs(),
    };
    return { dir, fcConfig, binary };
  }

  const requestsOf = (vmDir: string): ApiRequest[] =>
    readFileSync(path.join(vmDir, 'fake-requests.jsonl'), 'utf8').trim().split('\n').map((line) => JSON.parse(line) as ApiRequest);

  it('boots (API calls in order, valid bodies), reaches the agent over the vsock handshake, snapshots, restores, cleans up', async () => {
    const { dir, fcConfig } = await setup();
    const vmShape = { ...shape, rootImage: path.join(dir, 'root.ext4') };
    const vm = await FirecrackerVm.start({ config: fcConfig, shape: vmShape, vmDir: path.join(dir, 'vms', 'a'), owner: 'test', name: 'kindling-test-a', readyTimeoutMs: 20_000 });
    try {
      assert.ok(vm.alive);
      assert.equal((await vm.agent.ping(2000)).agentVersion, 'fake-firecracker');
      const exec = vm.agent.exec({ argv: ['echo', 'hi'], env: {}, workdir: '/work', limits: { memoryMb: 64, pids: 8, cpus: 1, diskMb: 8 }, stdin: false, uid: 65534, gid: 65534 });
      const out: Buffer[] = [];
      exec.stdout.on('data', (chunk: Buffer) => out.push(chunk));
      assert.equal((await exec.exit).exitCode, 0);
      assert.equal(Buffer.concat(out).toString(), 'echo hi\n');
      const sent = requestsOf(vm.vmDir);
      assert.deepEqual(sent, bootRequests(fcConfig, vmShape));
      for (const req of sent) assert.deepEqual(validateRequest(req), []);
      const record = JSON.parse(readFileSync(path.join(vm.vmDir, 'vm.json'), 'utf8')) as { owner: string; pid: number; driver: string };
      assert.equal(record.pid, vm.vmProcess.child.pid);
      assert.equal(record.driver, 'firecracker');
      assert.match(readFileSync(path.join(vm.vmDir, 'console.log'), 'utf8'), /stand-in/);

      const base = path.join(dir, 'snap.vmstate');
      await vm.snapshot(base);
      assert.ok(existsSync(base) && existsSync(`${base}.mem`));
      const snapshotCalls = requestsOf(vm.vmDir).slice(sent.length);
      assert.deepEqual(snapshotCalls, snapshotCreateRequests(base));
      const info = await new FirecrackerApi(path.join(vm.vmDir, 'api.sock')).request<{ state: string }>({ method: 'GET', path: '/' });
      assert.equal(info?.state, 'Paused');

      const clone = await FirecrackerVm.start({ config: fcConfig, shape: vmShape, vmDir: path.join(dir, 'vms', 'b'), owner: 'test', name: 'kindling-test-b', incoming: base, readyTimeoutMs: 20_000 });
      try {
        assert.deepEqual(requestsOf(clone.vmDir), snapshotLoadRequests(base));
        assert.equal((await clone.agent.seed(Buffer.alloc(32, 1))).reseeded, false);
        assert.ok(existsSync(path.join(clone.vmDir, 'vsock.sock')), 'the restored clone listens on its own vsock socket');
      } finally {
        await clone.destroy();
      }
      assert.ok(!existsSync(clone.vmDir));
    } finally {
      await vm.destroy();
      await vm.destroy(); // idempotent
    }
    assert.ok(!vm.alive);
    assert.ok(!existsSync(vm.vmDir));
  });

  it('an API error during start kills the process, removes the VM dir and reports the fault message', async () => {
    const { dir, fcConfig } = await setup();
    const vmDir = path.join(dir, 'vms', 'bad');
    await assert.rejects(
      FirecrackerVm.start({ config: { ...fcConfig, kernel: path.join(dir, 'no-such-vmlinux') }, shape: { ...shape, rootImage: path.join(dir, 'root.ext4') }, vmDir, owner: 'test', name: 'kindling-bad', readyTimeoutMs: 20_000 }),
      /PUT \/actions: Cannot start microvm without kernel configuration/,
    );
    assert.ok(!existsSync(vmDir));
    await assert.rejects(
      FirecrackerVm.start({ config: { ...fcConfig, firecrackerBinary: path.join(dir, 'missing') }, shape, vmDir, owner: 'test', name: 'kindling-missing', readyTimeoutMs: 5000 }),
      /ENOENT/,
    );
    assert.ok(!existsSync(vmDir));
  });

  it('reap() after a "crash": kills the orphaned VMM of its owner, removes its dir, leaves other owners and kept dirs alone', async () => {
    const { dir, fcConfig } = await setup();
    const vmsDir = path.join(dir, 'vms');
    const vmShape = { ...shape, rootImage: path.join(dir, 'root.ext4') };
    const orphan = await FirecrackerVm.start({ config: fcConfig, shape: vmShape, vmDir: path.join(vmsDir, 'orphan-1'), owner: 'me', name: 'kindling-orphan-1', readyTimeoutMs: 20_000 });
    const kept = await FirecrackerVm.start({ config: fcConfig, shape: vmShape, vmDir: path.join(vmsDir, 'kept-1'), owner: 'me', name: 'kindling-kept-1', readyTimeoutMs: 20_000 });
    const foreign = await FirecrackerVm.start({ config: fcConfig, shape: vmShape, vmDir: path.join(vmsDir, 'foreign-1'), owner: 'someone-else', name: 'kindling-foreign-1', readyTimeoutMs: 20_000 });
    try {
      orphan.agent.close();
      const removed = await reapVmDirs(vmsDir, 'me', new Set([kept.vmDir]));
      assert.equal(removed, 1);
      await orphan.exited;
      assert.ok(!orphan.alive, 'the orphan firecracker was killed');
      assert.ok(kept.alive && foreign.alive);
      assert.deepEqual((await readdir(vmsDir)).sort(), ['foreign-1', 'kept-1']);
    } finally {
      await Promise.all([orphan.destroy(), kept.destroy(), foreign.destroy()]);
    }
  });
});

/** A temporary directory and a maker of files in it whose mtime is `ageMs` before `now`. */
async function fileAges(prefix: string): Promise<{ dir: string; now: number; make: (name: string, ageMs: number) => Promise<void> }> {
  const dir = await tempDir(prefix);
  const now = Date.now();
  const make = async (name: string, ageMs: number): Promise<void> => {
    await writeFile(path.join(dir, name), 'x');
    const when = new Date(now - ageMs);
    await utimes(path.join(dir, name), when, when);
  };
  return { dir, now, make };
}

describe('microvm snapshot reaping', () => {
  it('removes snapshots unused for longer than the max age and tmp files of dead writers, keeps those in use', async () => {
    const { dir, now, make } = await fileAges('kindling-snap-reap-');
    await make('old.vmstate', 10_000);
    await make('old.vmstate.mem', 10_000);
    await make('fresh.vmstate', 10);
    await make('inuse.vmstate', 10_000);
    await make('inuse.vmstate.mem', 10_000);
    await make(`a.vmstate.${process.pid}.tmp`, 10_000); // our own writer is alive
    await make('b.vmstate.999999999.tmp', 0); // no such pid
    const removed = await reapSnapshots(dir, 5000, new Set([path.join(dir, 'inuse.vmstate')]), now);
    assert.equal(removed.length, 3);
    assert.deepEqual((await readdir(dir)).sort(), [`a.vmstate.${process.pid}.tmp`, 'fresh.vmstate', 'inuse.vmstate', 'inuse.vmstate.mem']);
  });

  it('asks whether a file is in use at the moment it would go; a memory file ages with its state file; leftovers of a removal go', async () => {
    const { dir, now, make } = await fileAges('kindling-snap-reap-');
    await make('claimed.ext4', 10_000);
    await make('old.ext4', 10_000);
    await make('restored.vmstate', 10); // restored from lately: its old memory file stays
    await make('restored.vmstate.mem', 10_000);
    await make('half.ext4.reaped', 0); // a removal cut short by a crash
    const asked: string[] = [];
    const removed = await reapSnapshots(dir, 5000, (file) => {
      asked.push(path.basename(file));
      return file.endsWith('claimed.ext4');
    }, now);
    assert.deepEqual(removed.map((file) => path.basename(file)), ['old.ext4']);
    assert.deepEqual(asked.sort(), ['claimed.ext4', 'old.ext4'], 'only stale files are asked about');
    assert.deepEqual((await readdir(dir)).sort(), ['claimed.ext4', 'restored.vmstate', 'restored.vmstate.mem']);
  });

  it('keeps at most N snapshots: the least recently restored go with their memory files, those in use stay', async () => {
    const { dir, make } = await fileAges('kindling-snap-trim-');
    await make('a.vmstate', 1000);
    await make('b.vmstate', 2000);
    await make('c.vmstate', 3000);
    await make('c.vmstate.mem', 3000);
    await make('d.vmstate', 4000); // oldest, but a VM is starting from it
    await make('e.vmstate', 5000);
    const removed = await trimSnapshots(dir, 2, (file) => file.endsWith('d.vmstate'));
    assert.deepEqual(removed.map((file) => path.basename(file)).sort(), ['c.vmstate', 'e.vmstate']);
    assert.deepEqual((await readdir(dir)).sort(), ['a.vmstate', 'b.vmstate', 'd.vmstate']);
    assert.deepEqual(await trimSnapshots(dir, 5, () => false), [], 'under the bound nothing goes');
  });
});

describe('firecracker with a real binary', () => {
  it('boots a real Firecracker VM to agent-ready', async (t) => {
    const missing = firecrackerUnavailable('firecracker', kvmUsable());
    if (missing) return t.skip(`real Firecracker boots need: ${missing}`);
    const assets = await readAssets();
    if (!assets?.vmlinux) return t.skip(skipOrFail('microvm', 'the microvm assets have no vmlinux; run "kindling images build --microvm"'));
    const dir = await tempDir('kindling-fc-real-');
    const rootImage = '/var/lib/kindling/images/base/rootfs.ext4';
    if (!existsSync(rootImage)) return t.skip(skipOrFail('microvm', `no ${rootImage}; run "kindling images build --microvm"`));
    const vm = await FirecrackerVm.start({
      config: { firecrackerBinary: 'firecracker', kernel: assets.vmlinux, initramfs: assets.initramfs, agentDisk: assets.agentDisk, bootArgs: firecrackerBootArgs() },
      shape: { rootImage, vcpus: 1, memoryMb: 256 },
      vmDir: path.join(dir, 'vm'),
      owner: 'test',
      name: 'kindling-real',
      readyTimeoutMs: 60_000,
    });
    try {
      assert.ok((await vm.agent.ping()).agentVersion);
    } finally {
      await vm.destroy();
    }
  });

  it('says what is missing on this host', () => {
    const reason = firecrackerUnavailable('definitely-not-firecracker', false);
    assert.match(String(reason), /KVM is not usable/);
    assert.match(String(reason), /no definitely-not-firecracker binary/);
  });
});
