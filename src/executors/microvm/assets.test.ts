import assert from 'node:assert/strict';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type * as VmProtocol from '../../../agent/vm/protocol.js';
import { missingImports, relativeImports, writeTree } from '../../../test/helpers/shipped-modules.js';
import { GUEST_AGENT_MODULES, INIT_SCRIPT, moduleDepends } from './assets.js';
import { writeCpio } from './cpio.js';
import { kernelCommandLine, qemuArgs } from './qemu.js';

describe('microvm assets', () => {
  it('writes newc cpio records the kernel can unpack (magic, names, 4-byte alignment, trailer)', () => {
    const archive = writeCpio([
      { name: 'bin', kind: 'dir', mode: 0o755 },
      { name: 'bin/tool', kind: 'file', mode: 0o755, data: 'abc' },
      { name: 'bin/sh', kind: 'symlink', mode: 0o777, data: 'tool' },
    ]);
    const text = archive.toString('latin1');
    assert.equal(text.slice(0, 6), '070701');
    assert.equal(archive.length % 4, 0);
    assert.ok(text.includes('bin/tool\0'));
    assert.ok(text.includes('TRAILER!!!\0'));
    // The file record: mode 0100755 and size 3 in hex fields.
    const at = text.indexOf('bin/tool\0') - 110;
    assert.equal(text.slice(at + 14, at + 22), (0o100755).toString(16).padStart(8, '0'));
    assert.equal(text.slice(at + 54, at + 62), '00000003');
  });

  it("reads a module's depends= from its modinfo strings", () => {
    const ko = Buffer.concat([Buffer.from('\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0')]);
    assert.deepEqual(moduleDepends(ko), ['virtio', 'virtio_ring']);
    assert.deepEqual(moduleDepends(Buffer.from('\0depends=\0name=x\0')), []);
    assert.deepEqual(moduleDepends(Buffer.from('nothing')), []);
  });

  it('the init mounts the image read-only and hands over to the agent', () => {
    assert.match(INIT_SCRIPT, /mount -t ext4 -o ro,noload "\$root" \/newroot/);
    assert.match(INIT_SCRIPT, /switch_root \/newroot \/run\/kindling-agent\/bin\/node/);
  });

  it('the agent disk holds the guest agent and everything it imports, in the tree the init starts it from', async () => {
    // The init runs /run/kindling-agent/agent/<module>: that module is shipped.
    const entry = /\/run\/kindling-agent\/agent\/(\S+\.js)/.exec(INIT_SCRIPT)?.[1];
    assert.equal(entry, 'vm/guest-agent.js');
    assert.ok((GUEST_AGENT_MODULES as readonly string[]).includes(entry));
    const distAgent = fileURLToPath(new URL('../../../agent/', import.meta.url));
    const files = new Map<string, Buffer>();
    for (const name of GUEST_AGENT_MODULES) files.set(name, await readFile(path.join(distAgent, name)));
    assert.ok(relativeImports(files.get('vm/protocol.js')!.toString()).includes('../frame.js'), 'the guest protocol uses the shared codec');
    assert.deepEqual(missingImports(files), []);
    // And node loads them from a copy of that tree alone (as under /run/kindling-agent/agent, with its package.json).
    const dir = await mkdtemp(path.join(tmpdir(), 'kindling-agent-disk-'));
    try {
      await writeTree(dir, files);
      await writeFile(path.join(dir, 'package.json'), '{"type":"module"}\n');
      await import(pathToFileURL(path.join(dir, 'vm/guest-agent.js')).href);
      const shipped = (await import(pathToFileURL(path.join(dir, 'vm/protocol.js')).href)) as typeof VmProtocol;
      const [frame] = new shipped.FrameDecoder().push(shipped.encodeJson(shipped.MessageType.PING, 5, { version: shipped.PROTOCOL_VERSION }));
      assert.equal(frame?.id, 5);
      assert.deepEqual(shipped.decodeJson(frame!), { version: shipped.PROTOCOL_VERSION });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('builds a microvm qemu command line: TCG or KVM, overlay disk, read-only agent disk, QMP, virtio-serial', () => {
    const config = {
      qemuBinary: 'qemu-system-x86_64',
      qemuImgBinary: 'qemu-img',
      assets: { dir: '/a', kernel: '/a/vmlinuz', vmlinux: null, initramfs: '/a/initramfs.cpio', agentDisk: '/a/agent.ext4', stamp: {} as never },
      accel: 'tcg' as const,
      tscKhz: 2096000,
    };
    const args = qemuArgs(config, { rootImage: '/img/base.ext4', vcpus: 2, memoryMb: 384 }, '/vm', { name: 'kindling-x' });
    const joined = args.join(' ');
    assert.match(joined, /-M microvm/);
    assert.match(joined, /-accel tcg,thread=multi/);
    assert.match(joined, /-m 384M -smp 2/);
    assert.match(joined, /file=\/vm\/root.qcow2,format=qcow2/);
    assert.match(joined, /file=\/a\/agent.ext4,format=raw,if=none,readonly=on/);
    assert.match(joined, /-qmp unix:\/vm\/qmp.sock,server=on,wait=off/);
    assert.match(joined, /virtserialport,chardev=agentport,name=dev.kindling.agent/);
    assert.ok(!args.includes('-incoming'));
    const restore = qemuArgs({ ...config, accel: 'kvm' }, { rootImage: '/i', vcpus: 1, memoryMb: 256 }, '/vm', { name: 'n', incoming: "/s/it's.bin" });
    assert.deepEqual(restore.slice(-2), ['-incoming', `exec:cat '/s/it'\\''s.bin'`]);
    assert.ok(restore.join(' ').includes('-accel kvm -cpu host'));
    assert.match(kernelCommandLine(config), /tsc_early_khz=2096000 tsc=reliable no_timer_check/);
    assert.doesNotMatch(kernelCommandLine({ tscKhz: null }), /tsc_early_khz/);
  });

  it("attaches bound directories' disks read-only after the others and names their labels on the kernel command line", () => {
    const config = {
      qemuBinary: 'qemu-system-x86_64',
      qemuImgBinary: 'qemu-img',
      assets: { dir: '/a', kernel: '/a/vmlinuz', vmlinux: null, initramfs: '/a/initramfs.cpio', agentDisk: '/a/agent.ext4', stamp: {} as never },
      accel: 'tcg' as const,
      tscKhz: null,
    };
    const binds = [
      { file: '/b/one.ext4', label: 'kb-one', target: '/work' },
      { file: '/b/two.ext4', label: 'kb-two', target: '/work/node_modules' },
    ];
    const args = qemuArgs(config, { rootImage: '/img/base.ext4', vcpus: 1, memoryMb: 256, binds }, '/vm', { name: 'n' });
    const joined = args.join(' ');
    assert.match(joined, /-drive id=bind0,file=\/b\/one.ext4,format=raw,if=none,readonly=on -device virtio-blk-device,drive=bind0/);
    assert.match(joined, /-drive id=bind1,file=\/b\/two.ext4,format=raw,if=none,readonly=on -device virtio-blk-device,drive=bind1/);
    assert.ok(joined.indexOf('drive=bind0') > joined.indexOf('drive=agent'), 'after the root and agent disks');
    assert.match(args[args.indexOf('-append') + 1]!, / kindling\.binds=kb-one,kb-two$/);
    const plain = qemuArgs(config, { rootImage: '/img/base.ext4', vcpus: 1, memoryMb: 256 }, '/vm', { name: 'n' });
    assert.doesNotMatch(plain.join(' '), /bind0|kindling\.binds/);
  });
});
