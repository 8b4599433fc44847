import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ociSpec, tmpfsMount } from './oci-spec.js';
import { hostPidsMax } from './index.js';

const limits = { timeoutMs: 1000, memoryMb: 128, cpus: 0.5, pids: 32, outputBytes: 1024, diskMb: 16, openFiles: 64 };

describe('gvisor OCI spec', () => {
  const spec = ociSpec({
    rootfs: '/images/base/rootfs',
    args: ['echo', 'hi'],
    env: { PATH: '/bin', A: 'x=y' },
    cwd: '/work',
    uid: 65534,
    gid: 65534,
    hostname: 'kindling',
    limits,
    mounts: [tmpfsMount('/work', 16)],
    cgroupsPath: '/kindling-gvisor/owner/ex1',
    annotations: { 'dev.kindling.owner': 'owner' },
  }) as {
    process: { user: { uid: number }; env: string[]; capabilities: Record<string, unknown[]>; noNewPrivileges: boolean; rlimits: { type: string; hard: number }[] };
    root: { readonly: boolean };
    mounts: { destination: string; options: string[] }[];
    linux: { resources: { memory: { limit: number }; cpu: { quota: number; period: number }; pids: { limit: number } }; cgroupsPath: string };
  };

  it('runs an unprivileged uid with no capabilities on a read-only root', () => {
    assert.notEqual(spec.process.user.uid, 0);
    assert.equal(spec.process.noNewPrivileges, true);
    for (const set of Object.values(spec.process.capabilities)) assert.deepEqual(set, []);
    assert.equal(spec.root.readonly, true);
  });

  it('passes exactly the requested environment, values with = intact', () => {
    assert.deepEqual(spec.process.env, ['PATH=/bin', 'A=x=y']);
  });

  it('states the limits in the spec (memory in bytes, cpu as a quota, open files as RLIMIT_NOFILE)', () => {
    assert.equal(spec.linux.resources.memory.limit, 128 * 1024 * 1024);
    assert.deepEqual(spec.linux.resources.cpu, { quota: 50_000, period: 100_000 });
    assert.equal(spec.linux.resources.pids.limit, 32);
    assert.deepEqual(spec.process.rlimits, [{ type: 'RLIMIT_NOFILE', hard: 64, soft: 64 }]);
    assert.equal(spec.linux.cgroupsPath, '/kindling-gvisor/owner/ex1');
  });

  it('bounds a tmpfs by its size', () => {
    const work = spec.mounts.find((m) => m.destination === '/work');
    assert.ok(work?.options.includes('size=16m'));
  });

  it("bounds the host's tasks of a sandbox above its own process count (sentry threads)", () => {
    assert.ok(hostPidsMax(32) > 32);
    assert.equal(hostPidsMax(32), 384);
  });
});
