import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { bootHeaderPayload, compressionOf, extractVmlinux, isElf } from './vmlinux.js';
import { skipOrFail } from '../test-support.js';

/** A minimal bzImage: boot sector + setup with the HdrS header (protocol 2.15), then the payload at payload_offset. */
function fakeBzImage(payload: Buffer, junkAfter = Buffer.alloc(0)): Buffer {
  const setupSectors = 3;
  const setup = Buffer.alloc((setupSectors + 1) * 512);
  setup[0x1f1] = setupSectors;
  setup.write('HdrS', 0x202, 'latin1');
  setup.writeUInt16LE(0x020f, 0x206);
  const decompressorStub = Buffer.from('decompressor code with a stray \x1f\x8b\x08 that is not the payload', 'latin1');
  setup.writeUInt32LE(decompressorStub.length, 0x248);
  setup.writeUInt32LE(payload.length, 0x24c);
  return Buffer.concat([setup, decompressorStub, payload, junkAfter]);
}

const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]), Buffer.alloc(5000, 0xab)]);

describe('vmlinux extraction (for Firecracker)', () => {
  it('finds the payload through the boot header and gunzips it', async () => {
    const image = fakeBzImage(gzipSync(elf), Buffer.from('trailer'));
    assert.equal(compressionOf(bootHeaderPayload(image) as Buffer), 'gzip');
    const { vmlinux, compression } = await extractVmlinux(image);
    assert.equal(compression, 'gzip');
    assert.deepEqual(vmlinux, elf);
  });

  it('falls back to scanning for magics when the header is absent, skipping candidates that are not an ELF', async () => {
    const notElf = gzipSync(Buffer.from('just data'));
    const image = Buffer.concat([Buffer.from('no header here'), notElf, Buffer.from('..'), gzipSync(elf)]);
    assert.equal(bootHeaderPayload(image), null);
    assert.deepEqual((await extractVmlinux(image)).vmlinux, elf);
  });

  it('decompresses xz payloads with the xz tool', async (t) => {
    if (spawnSync('xz', ['--version']).status !== 0) return t.skip(skipOrFail('microvm', 'no xz binary (Debian: xz-utils)'));
    const xz = spawnSync('xz', ['-c', '--check=crc32'], { input: elf }).stdout;
    const { vmlinux, compression } = await extractVmlinux(fakeBzImage(xz));
    assert.equal(compression, 'xz');
    assert.deepEqual(vmlinux, elf);
  });

  it('returns an ELF as it is and rejects an image without a kernel', async () => {
    assert.equal((await extractVmlinux(elf)).compression, 'none');
    await assert.rejects(extractVmlinux(Buffer.from('nothing to see')), /no compressed ELF kernel found/);
  });

  it("extracts an ELF from the Debian kernel in the microvm assets", async (t) => {
    const vmlinuz = '/var/lib/kindling/microvm/vmlinuz';
    if (!existsSync(vmlinuz)) return t.skip(skipOrFail('microvm', `no ${vmlinuz}; run "kindling images build --microvm"`));
    const image = readFileSync(vmlinuz);
    const { vmlinux, compression } = await extractVmlinux(image);
    assert.ok(isElf(vmlinux));
    assert.equal(vmlinux.readUInt16LE(0x12), 0x3e, 'e_machine is x86-64');
    assert.ok(vmlinux.length > image.length * 2, `uncompressed ${vmlinux.length} bytes from ${image.length}`);
    t.diagnostic(`${compression}: ${image.length} -> ${vmlinux.length} bytes`);
  });
});
