import assert from 'node:assert/strict';
import { test } from 'node:test';
import { containerCreateOptions } from './container-options.js';

const shape = { image: 'kindling/base', workdir: '/work', limits: { memoryMb: 128, cpus: 1, pids: 64, diskMb: 16, openFiles: 256 } };

test('without rwBinds the work dir and /tmp are tmpfs bounded by diskMb', () => {
  const options = containerCreateOptions({ shape, hostRunDir: '/state/docker/slot-x', labels: {} });
  assert.deepEqual(Object.keys(options.HostConfig!.Tmpfs!).sort(), ['/tmp', '/work']);
  assert.match(options.HostConfig!.Tmpfs!['/work']!, /size=16m/);
  assert.deepEqual(options.HostConfig!.Binds, ['/state/docker/slot-x:/.kindling:ro']);
});

test("rwBinds (a persistent sandbox's disk) replace the tmpfs at their targets, read-write; the root stays read-only", () => {
  const rwBinds = [{ source: '/state/docker-volumes/o/sb-1/work', target: '/work' }, { source: '/state/docker-volumes/o/sb-1/disk/tmp', target: '/tmp' }];
  const options = containerCreateOptions({ shape, hostRunDir: '/state/docker/slot-y', labels: {}, rwBinds });
  assert.deepEqual(options.HostConfig!.Tmpfs, {});
  assert.deepEqual(options.HostConfig!.Binds, ['/state/docker/slot-y:/.kindling:ro', '/state/docker-volumes/o/sb-1/work:/work:rw', '/state/docker-volumes/o/sb-1/disk/tmp:/tmp:rw']);
  assert.equal(options.HostConfig!.ReadonlyRootfs, true);
  assert.deepEqual(options.HostConfig!.CapDrop, ['ALL']);
});

test("roBinds (a function's bundle) replace the work dir's tmpfs and are bound read-only; /tmp stays a tmpfs", () => {
  const roBinds = [{ source: '/data/bundles/abc', target: '/work' }];
  const options = containerCreateOptions({ shape, hostRunDir: '/state/docker/slot-z', labels: {}, roBinds });
  assert.deepEqual(Object.keys(options.HostConfig!.Tmpfs!), ['/tmp']);
  assert.deepEqual(options.HostConfig!.Binds, ['/state/docker/slot-z:/.kindling:ro', '/data/bundles/abc:/work:ro']);
});
