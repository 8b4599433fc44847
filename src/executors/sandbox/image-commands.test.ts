/** Commands found in an image before its sandbox starts: an image of real files in a temp dir, no sandbox. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { ImageCommands, passesThrough, type ImageRoot } from './image-commands.js';

const PATH = '/usr/local/bin:/usr/bin:/bin';
let top: string;

/** A minimal 64-bit little-endian ELF file: machine `machine`, one PT_LOAD program header and no PT_INTERP (type 2: a static executable). */
function staticElf(machine: number, type = 2): Buffer {
  const header = Buffer.alloc(64 + 56);
  header.writeUInt32BE(0x7f454c46, 0);
  header[4] = 2;
  header[5] = 1;
  header.writeUInt16LE(type, 0x10);
  header.writeUInt16LE(machine, 0x12);
  header.writeBigUInt64LE(64n, 0x20);
  header.writeUInt16LE(56, 0x36);
  header.writeUInt16LE(1, 0x38);
  header.writeUInt32LE(1, 64);
  return header;
}

/** An image: usr/bin and usr/lib64 with the host's /usr/bin/true and a stand-in for its ELF interpreter. */
function makeImage(name: string, withInterpreter = true): ImageRoot {
  const rootfs = path.join(top, name);
  const bin = path.join(rootfs, 'usr', 'bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.mkdirSync(path.join(rootfs, 'usr', 'lib64'), { recursive: true });
  fs.mkdirSync(path.join(rootfs, 'etc'));
  fs.symlinkSync('usr/bin', path.join(rootfs, 'bin'));
  fs.symlinkSync('usr/lib64', path.join(rootfs, 'lib64'));
  if (withInterpreter) fs.writeFileSync(path.join(rootfs, 'usr', 'lib64', 'ld-linux-x86-64.so.2'), 'not really', { mode: 0o755 });
  fs.copyFileSync('/usr/bin/true', path.join(bin, 'tool'));
  fs.chmodSync(path.join(bin, 'tool'), 0o755);
  fs.copyFileSync('/usr/bin/true', path.join(bin, 'private'));
  fs.chmodSync(path.join(bin, 'private'), 0o750);
  fs.writeFileSync(path.join(bin, 'script'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'static'), staticElf(62), { mode: 0o755 });
  // EM_ARM (32-bit): never the host's architecture here (x86-64 or arm64).
  fs.writeFileSync(path.join(bin, 'foreign'), staticElf(40), { mode: 0o755 });
  // A relocatable object file is no program.
  fs.writeFileSync(path.join(bin, 'object'), staticElf(62, 1), { mode: 0o755 });
  fs.symlinkSync('/usr/bin/tool', path.join(bin, 'absolute'));
  // Reached through a directory the sandbox's uid cannot search.
  fs.mkdirSync(path.join(rootfs, 'usr', 'locked'), { mode: 0o700 });
  fs.copyFileSync('/usr/bin/true', path.join(rootfs, 'usr', 'locked', 'tool'));
  fs.chmodSync(path.join(rootfs, 'usr', 'locked', 'tool'), 0o755);
  // Out of the image by `..`: clamped at its root, where there is no such file (the host's is an ELF executable).
  fs.symlinkSync('../../../../../../../usr/bin/true', path.join(bin, 'escape'));
  fs.symlinkSync(path.resolve('/usr/bin/true'), path.join(bin, 'host'));
  fs.symlinkSync('loop', path.join(bin, 'loop'));
  // A link that asks for a directory (`tool/`): execve fails with ENOTDIR.
  fs.symlinkSync('tool/', path.join(bin, 'slashed'));
  // The kernel refuses program headers of another size, and an executable with none.
  const odd = staticElf(62);
  odd.writeUInt16LE(64, 0x36);
  fs.writeFileSync(path.join(bin, 'odd'), odd, { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'none'), Buffer.concat([staticElf(62).subarray(0, 0x38), Buffer.alloc(8)]), { mode: 0o755 });
  fs.mkdirSync(path.join(bin, 'adir'));
  const entries = new Map(fs.readdirSync(rootfs).map((entry) => [entry, 'dir']));
  return { rootfs, entries };
}

before(() => {
  top = fs.mkdtempSync(path.join(tmpdir(), 'image-commands-'));
});
after(() => fs.rmSync(top, { recursive: true, force: true }));

test('an ELF executable of the image is found through PATH, links resolved inside the image, with every path gone through', { skip: process.arch !== 'x64' && 'the stand-in interpreter is x86-64\'s' }, () => {
  const image = makeImage('a');
  const commands = new ImageCommands();
  const tool = commands.lookup(image, 'tool', PATH);
  assert.equal(tool.direct, true);
  // /usr/local/bin did not exist: the next PATH entry was tried, as execvp does.
  assert.deepEqual(tool.visited.slice(0, 4), ['/usr', '/usr/local', '/usr/bin', '/usr/bin/tool']);
  // The host's true is dynamically linked: its interpreter was looked up too, through the image's /lib64 link.
  assert.ok(tool.visited.includes('/lib64') && tool.visited.includes('/usr/lib64/ld-linux-x86-64.so.2'), tool.visited.join(' '));
  assert.equal(commands.lookup(image, '/bin/tool', PATH).direct, true);
  assert.equal(commands.lookup(image, 'absolute', PATH).direct, true);
  assert.equal(commands.lookup(image, 'static', PATH).direct, true);
});

test('anything else keeps the shell: missing, scripts, not executable by others, other architectures, links out or in loops, odd PATHs', () => {
  const image = makeImage('b');
  const commands = new ImageCommands();
  for (const command of ['missing', 'script', 'private', 'foreign', 'escape', 'host', 'loop', 'slashed', 'odd', 'none', '/usr/bin/tool/', '/usr/bin/tool/.', '..', 'adir', './tool', 'usr/bin/tool', '', '/proc/self/exe', '/tmp/tool']) {
    assert.equal(commands.lookup(image, command, PATH).direct, false, command);
  }
  // An empty or relative PATH entry is the work dir; no PATH at all is the shell's default.
  assert.equal(commands.lookup(image, 'tool', ':/usr/bin').direct, false);
  assert.equal(commands.lookup(image, 'tool', 'bin:/usr/bin').direct, false);
  assert.equal(commands.lookup(image, 'tool', '/usr/locked').direct, false);
  assert.equal(commands.lookup(image, 'object', PATH).direct, false);
  // `..` applies after the link before it, as in the kernel: /bin -> usr/bin, so /bin/../usr/bin is /usr/usr/bin.
  assert.equal(commands.lookup(image, 'tool', '/bin/../usr/bin').direct, false);
  assert.equal(commands.lookup(image, 'tool', '/bin/../bin').direct, true);
  // More PATH entries than a lookup goes through.
  assert.equal(commands.lookup(image, 'tool', [...Array(32).fill('/nowhere'), '/usr/bin'].join(':')).direct, false);
  assert.equal(commands.lookup(image, 'tool', undefined).direct, false);
  // A dynamically linked executable whose interpreter the image lacks would fail in execve: the shell reports it.
  assert.equal(commands.lookup(makeImage('c', false), 'tool', PATH).direct, false);
});

test('lookups are cached per rootfs directory, the cache is bounded, and a path gone through under a mount is seen', { skip: process.arch !== 'x64' && 'the stand-in interpreter is x86-64\'s' }, () => {
  const image = makeImage('d');
  const commands = new ImageCommands();
  const first = commands.lookup(image, 'tool', PATH);
  assert.equal(first.direct, true);
  // Images do not change: a file removed behind the cache's back is not looked at again...
  fs.rmSync(path.join(image.rootfs, 'usr', 'bin', 'tool'));
  assert.equal(commands.lookup(image, 'tool', PATH), first);
  // ...but names enough to fill the cache start it over,
  for (let i = 0; i < 1100; i++) commands.lookup(image, `missing-${i}`, PATH);
  assert.equal(commands.lookup(image, 'tool', PATH).direct, false);
  // and a rebuilt image (a directory put in the place of the old one: another inode or change time) is looked up afresh.
  fs.copyFileSync('/usr/bin/true', path.join(image.rootfs, 'usr', 'bin', 'tool'));
  fs.chmodSync(path.join(image.rootfs, 'usr', 'bin', 'tool'), 0o755);
  assert.equal(commands.lookup(image, 'tool', PATH).direct, false);
  fs.renameSync(image.rootfs, `${image.rootfs}.old`);
  fs.renameSync(`${image.rootfs}.old`, image.rootfs);
  assert.equal(commands.lookup(image, 'tool', PATH).direct, true);
  const lookup = { direct: true, visited: ['/work/bin', '/work/bin/tool', '/usr', '/usr/bin', '/usr/bin/tool'] };
  assert.equal(passesThrough(lookup, ['/work']), true);
  assert.equal(passesThrough(lookup, ['/wor', '/usr/bin/tool/x', '/tmp']), false);
  assert.equal(passesThrough(lookup, ['/usr/bin/tool']), true);
  // A work dir given with a trailing slash is the same mount.
  assert.equal(passesThrough(lookup, ['/work/']), true);
});
