/**
 * What a microVM boots besides the image's ext4 (built by src/images from the same recipe as the other executors):
 *
 *   ${assetsDir}/vmlinuz          Debian's linux-image-*-amd64 kernel (virtio, ext4 are modules there)
 *   ${assetsDir}/vmlinux          the same kernel uncompressed (ELF) for Firecracker (see vmlinux.ts)
 *   ${assetsDir}/initramfs.cpio   busybox (Debian's busybox-static), the modules needed to reach the disks and the agent
 *                                 port, and /init (INIT_SCRIPT): load modules, mount the image's ext4 read-only as the
 *                                 new root plus tmpfs mounts, mount the agent disk, switch_root into the agent
 *   ${assetsDir}/agent.ext4       the agent disk (label kindling-agent), mounted read-only at /run/kindling-agent:
 *                                 node (the host's own binary, see below), the libstdc++/libgcc_s it links, busybox, the
 *                                 guest helper and the port helper (static C programs, compiled here), and the compiled
 *                                 agent modules (GUEST_AGENT_MODULES) in their dist/agent tree
 *   ${assetsDir}/assets.json      the stamp (hash of every input), written last
 *
 * Node in the guest: the agent runs under a copy of the host's node binary on the agent disk, so EVERY image (also
 * base, which has no node) gets the same agent without changing its recipe; the image only has to provide glibc
 * (every Debian image does). The agent's library path is set for the agent alone, never for user processes.
 *
 * Debian packages are fetched with `apt-get download` + `dpkg -x` (no install on the host), so this needs the Debian
 * mirror once; later runs with an unchanged stamp only read a few files.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeCpio, type CpioEntry } from './cpio.js';
import { extractVmlinux } from './vmlinux.js';

export const DEFAULT_MICROVM_ASSETS_DIR = '/var/lib/kindling/microvm';
/** Bump when the layout or the init script changes in a way the stamp inputs do not capture. */
// 2: the init leaves bind disks (kindling.binds=) out of its choice of the root disk; assets of format 1 would take one as
// the root, so they are refused until rebuilt (`kindling images build --microvm`).
const ASSETS_FORMAT = 2;

/** Kernel modules the init loads, in dependency order (dependencies are resolved from each module's modinfo too). */
export const GUEST_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_console', 'vmw_vsock_virtio_transport', 'crc32c_generic', 'ext4'] as const;

export interface MicroVmAssets {
  dir: string;
  kernel: string;
  /** The uncompressed kernel for Firecracker; null in assets built before it existed. */
  vmlinux: string | null;
  initramfs: string;
  agentDisk: string;
  stamp: AssetsStamp;
}

export interface AssetsStamp {
  format: number;
  inputsHash: string;
  kernelPackage: string;
  kernelVersion: string;
  nodeVersion: string;
  modules: string[];
  builtAt: string;
}

export interface BuildAssetsOptions {
  dir?: string;
  /** Rebuild even when the stamp matches. */
  force?: boolean;
  /** Debian package providing the kernel; default: whatever `linux-image-amd64` depends on. */
  kernelPackage?: string;
  /** The node binary copied onto the agent disk; default the running one. */
  nodeBinary?: string;
  log?: (message: string) => void;
}

export function assetPaths(dir: string): { kernel: string; vmlinux: string; initramfs: string; agentDisk: string; stamp: string } {
  return {
    kernel: path.join(dir, 'vmlinuz'),
    vmlinux: path.join(dir, 'vmlinux'),
    initramfs: path.join(dir, 'initramfs.cpio'),
    agentDisk: path.join(dir, 'agent.ext4'),
    stamp: path.join(dir, 'assets.json'),
  };
}

/** Why assets that exist in `dir` are refused (built by an older Kindling), or null. */
export async function outdatedAssets(dir = DEFAULT_MICROVM_ASSETS_DIR): Promise<string | null> {
  try {
    const stamp = JSON.parse(await fs.readFile(assetPaths(dir).stamp, 'utf8')) as AssetsStamp;
    if (stamp.format === ASSETS_FORMAT) return null;
    return `the microvm assets in ${dir} were built for format ${String(stamp.format)} and this server needs format ${ASSETS_FORMAT} (an upgrade); rebuild them with "kindling images build --microvm"`;
  } catch {
    return null;
  }
}

/** The assets when they exist and are complete (stamp present), else null. Cheap: one file read. */
export async function readAssets(dir = DEFAULT_MICROVM_ASSETS_DIR): Promise<MicroVmAssets | null> {
  const paths = assetPaths(dir);
  try {
    const stamp = JSON.parse(await fs.readFile(paths.stamp, 'utf8')) as AssetsStamp;
    if (stamp.format !== ASSETS_FORMAT) return null;
    await Promise.all([fs.access(paths.kernel), fs.access(paths.initramfs), fs.access(paths.agentDisk)]);
    const vmlinux = await fs.access(paths.vmlinux).then(() => paths.vmlinux, () => null);
    return { dir, kernel: paths.kernel, vmlinux, initramfs: paths.initramfs, agentDisk: paths.agentDisk, stamp };
  } catch {
    return null;
  }
}

/** The /init of the initramfs. `@MODULES@` is replaced by the module file names in load order. */
export const INIT_SCRIPT = `#!/bin/busybox sh
# Kindling microVM init: reach the disks, mount the image read-only, hand over to the agent.
B=/bin/busybox
fail() { echo "kindling-init: $*"; $B poweroff -f; }
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
# Firecracker names its virtio-mmio devices on the command line (virtio_mmio.device=...); Debian builds virtio_mmio as a
# module and busybox's insmod does not read /proc/cmdline, so pass them on (QEMU's microvm finds them through ACPI).
mmio=""
$B grep -q kindling.transport=vsock /proc/cmdline && mmio=$($B tr ' ' '\\n' < /proc/cmdline | $B sed -n 's/^virtio_mmio\\.//p')
for m in @MODULES@; do
  args=""; [ "$m" = virtio_mmio.ko ] && args=$mmio
  $B insmod "/modules/$m" $args || echo "kindling-init: insmod $m failed"
done
# A persistent sandbox's VM has a disk for its data (label kindling-data, kernel argument kindling.data=1), and a
# function's VM a disk per bound directory (its labels in kindling.binds=L1,L2): the agent mounts them later; they are
# never the root, which is the one disk left.
binds=$($B tr ' ' '\\n' < /proc/cmdline | $B sed -n 's/^kindling\\.binds=//p' | $B tr ',' ' ')
wanted=0; for l in $binds; do wanted=$((wanted + 1)); done
agent=""; root=""; data=""; roots=0
# Until every disk named is there and exactly one is left for the root (a bind disk that is late must not be taken for
# it); 5 s at most, usually the first pass.
dataWanted=0; $B grep -q kindling.data=1 /proc/cmdline && dataWanted=1
i=0
while [ "$i" -lt 100 ]; do
  i=$((i + 1))
  agent=$($B findfs LABEL=kindling-agent 2>/dev/null)
  [ "$dataWanted" = 1 ] && data=$($B findfs LABEL=kindling-data 2>/dev/null)
  others=" $agent $data "; found=0
  for l in $binds; do d=$($B findfs "LABEL=$l" 2>/dev/null) && [ -n "$d" ] && { others="$others$d "; found=$((found + 1)); }; done
  root=""; roots=0
  for d in /dev/vd?; do [ -b "$d" ] || continue; case "$others" in *" $d "*) ;; *) root=$d; roots=$((roots + 1)) ;; esac; done
  [ -n "$agent" ] && [ "$roots" = 1 ] && [ "$found" = "$wanted" ] && { [ -n "$data" ] || [ "$dataWanted" = 0 ]; } && break
  $B usleep 50000
done
[ -n "$agent" ] || fail "the agent disk was not found"
[ "$found" = "$wanted" ] || fail "bind disks not found ($found of $wanted)"
[ -n "$data" ] || [ "$dataWanted" = 0 ] || fail "the data disk was not found"
[ "$roots" = 1 ] || fail "no single disk left for the root ($roots candidates)"
$B mkdir -p /newroot
$B mount -t ext4 -o ro,noload "$root" /newroot || fail "cannot mount the image from $root"
$B mount -t tmpfs -o mode=0755,size=16m run /newroot/run || fail "the image has no /run"
$B mkdir -p /newroot/run/kindling-agent
$B mount -t ext4 -o ro,noload "$agent" /newroot/run/kindling-agent || fail "cannot mount the agent disk"
$B mount -t tmpfs -o mode=0755,size=64m kindling /newroot/.kindling || fail "the image has no /.kindling"
$B mount -t tmpfs -o mode=1777,size=16m tmp /newroot/tmp
$B mount --move /dev /newroot/dev
$B mount --move /sys /newroot/sys
$B mount --move /proc /newroot/proc
$B mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || fail "no cgroup2"
$B ip link set lo up 2>/dev/null
export LD_LIBRARY_PATH=/run/kindling-agent/lib
exec $B switch_root /newroot /run/kindling-agent/bin/node /run/kindling-agent/agent/vm/guest-agent.js
`;

/** Builds (or confirms) the assets; idempotent, a matching stamp costs a few reads. */
export async function buildMicroVmAssets(options: BuildAssetsOptions = {}): Promise<MicroVmAssets> {
  const dir = path.resolve(options.dir ?? DEFAULT_MICROVM_ASSETS_DIR);
  const log = options.log ?? (() => undefined);
  const paths = assetPaths(dir);
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  const kernelPackage = options.kernelPackage ?? (await resolveKernelPackage());
  const nodeBinary = options.nodeBinary ?? process.execPath;
  const agentFiles = await agentSources();
  const inputsHash = createHash('sha256')
    .update(JSON.stringify({ format: ASSETS_FORMAT, kernelPackage, node: process.version, nodeBinary, init: INIT_SCRIPT, modules: GUEST_MODULES }))
    .update(JSON.stringify(agentFiles.map(({ name }) => name)))
    .update(Buffer.concat(await Promise.all([...agentFiles.map(({ file }) => file), GUEST_HELPER_SOURCE, PORT_HELPER_SOURCE].map((file) => fs.readFile(file)))))
    .digest('hex');
  const existing = await readAssets(dir);
  if (!options.force && existing && existing.stamp.inputsHash === inputsHash) {
    log(`microvm assets are up to date (${existing.stamp.kernelVersion}, node ${existing.stamp.nodeVersion})`);
    return existing;
  }

  const work = path.join(dir, `.build-${randomBytes(4).toString('hex')}`);
  await fs.mkdir(work, { recursive: true });
  try {
    log(`fetching ${kernelPackage} and busybox-static from the Debian mirror`);
    await run('apt-get', ['download', '-q', kernelPackage, 'busybox-static'], { cwd: work });
    const debs = (await fs.readdir(work)).filter((name) => name.endsWith('.deb'));
    const unpacked = path.join(work, 'x');
    for (const deb of debs) await run('dpkg-deb', ['-x', path.join(work, deb), unpacked]);
    const kernelVersion = (await fs.readdir(path.join(unpacked, 'lib/modules')))[0];
    if (!kernelVersion) throw new Error(`${kernelPackage} has no /lib/modules`);
    const moduleDir = path.join(unpacked, 'lib/modules', kernelVersion);
    const modules = await resolveModules(moduleDir, GUEST_MODULES);

    // initramfs
    const entries: CpioEntry[] = [
      ...['bin', 'dev', 'proc', 'sys', 'modules', 'newroot'].map((name): CpioEntry => ({ name, kind: 'dir', mode: 0o755 })),
      { name: 'bin/busybox', kind: 'file', mode: 0o755, data: await fs.readFile(path.join(unpacked, 'bin/busybox')) },
      { name: 'bin/sh', kind: 'symlink', mode: 0o777, data: 'busybox' },
      { name: 'init', kind: 'file', mode: 0o755, data: INIT_SCRIPT.replace('@MODULES@', modules.map((m) => path.basename(m)).join(' ')) },
    ];
    for (const file of modules) entries.push({ name: `modules/${path.basename(file)}`, kind: 'file', mode: 0o644, data: await fs.readFile(file) });
    await fs.writeFile(`${paths.initramfs}.tmp`, writeCpio(entries));

    // agent disk
    const stage = path.join(work, 'agent');
    await fs.mkdir(path.join(stage, 'bin'), { recursive: true });
    await fs.mkdir(path.join(stage, 'lib'), { recursive: true });
    await fs.mkdir(path.join(stage, 'agent/vm'), { recursive: true });
    await fs.copyFile(nodeBinary, path.join(stage, 'bin/node'));
    await fs.copyFile(path.join(unpacked, 'bin/busybox'), path.join(stage, 'bin/busybox'));
    await buildGuestHelper(path.join(stage, 'bin/kindling-guest-helper'));
    await buildStatic(PORT_HELPER_SOURCE, path.join(stage, 'bin/kindling-port'), 'the port helper');
    for (const lib of await cxxLibraries(nodeBinary)) await fs.copyFile(lib, path.join(stage, 'lib', path.basename(lib)));
    for (const { file, name } of agentFiles) await fs.copyFile(file, path.join(stage, 'agent', name));
    await fs.writeFile(path.join(stage, 'agent/package.json'), '{"type":"module"}\n');
    const stageBytes = await treeBytes(stage);
    const sizeMiB = Math.ceil((stageBytes * 1.2) / (1 << 20)) + 16;
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-m', '0', '-L', 'kindling-agent', '-d', stage, `${paths.agentDisk}.tmp`, `${sizeMiB}M`]);

    const bootDir = path.join(unpacked, 'boot');
    const vmlinuz = (await fs.readdir(bootDir)).find((name) => name.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${kernelPackage} has no /boot/vmlinuz-*`);
    await fs.copyFile(path.join(bootDir, vmlinuz), `${paths.kernel}.tmp`);
    const extracted = await extractVmlinux(await fs.readFile(path.join(bootDir, vmlinuz)));
    await fs.writeFile(`${paths.vmlinux}.tmp`, extracted.vmlinux);
    log(`vmlinux for Firecracker extracted (${extracted.compression}, ${Math.round(extracted.vmlinux.length / (1 << 20))} MiB)`);

    for (const file of [paths.kernel, paths.vmlinux, paths.initramfs, paths.agentDisk]) await fs.rename(`${file}.tmp`, file);
    const stamp: AssetsStamp = {
      format: ASSETS_FORMAT,
      inputsHash,
      kernelPackage,
      kernelVersion,
      nodeVersion: process.version,
      modules: modules.map((m) => path.basename(m)),
      builtAt: new Date().toISOString(),
    };
    await fs.writeFile(`${paths.stamp}.tmp`, JSON.stringify(stamp, null, 2) + '\n');
    await fs.rename(`${paths.stamp}.tmp`, paths.stamp);
    log(`microvm assets built: kernel ${kernelVersion}, ${modules.length} modules, agent disk ${sizeMiB} MiB`);
    return { dir, kernel: paths.kernel, vmlinux: paths.vmlinux, initramfs: paths.initramfs, agentDisk: paths.agentDisk, stamp };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
    await Promise.all([paths.kernel, paths.vmlinux, paths.initramfs, paths.agentDisk].map((file) => fs.rm(`${file}.tmp`, { force: true })));
  }
}

/** The guest helper's C source (CRNG reseed, vsock bridge), compiled statically onto the agent disk. */
export const GUEST_HELPER_SOURCE = fileURLToPath(new URL('../../../../agent/vm/guest-helper.c', import.meta.url));

/**
 * The port helper's C source (native/kindling-port.c, the same the bwrap and gvisor executors run): on the agent disk
 * as /run/kindling-agent/bin/kindling-port (protocol.ts PORT_HELPER_PATH), run per proxied connection (ports.ts).
 */
export const PORT_HELPER_SOURCE = fileURLToPath(new URL('../../../../native/kindling-port.c', import.meta.url));

/** `cc -static` of the guest helper (the host's compiler: gcc and libc6-dev; static so it runs on every image). */
export async function buildGuestHelper(output: string, compiler = 'cc'): Promise<void> {
  await buildStatic(GUEST_HELPER_SOURCE, output, 'the guest helper', compiler);
}

async function buildStatic(source: string, output: string, what: string, compiler = 'cc'): Promise<void> {
  await run(compiler, ['-static', '-O2', '-Wall', '-o', output, source]).catch((error: Error) => {
    throw new Error(`cannot build ${what} (needs a C compiler and static libc: Debian gcc, libc6-dev): ${error.message}`);
  });
}

/** The guest agent's compiled modules, relative to dist/agent, copied onto the agent disk in the same tree (under
 *  /run/kindling-agent/agent/): vm/guest-agent.js imports ./protocol.js, which imports ../frame.js (the codec shared
 *  with the resident agents). A module added to that chain must be added here, or the guest fails at boot. */
export const GUEST_AGENT_MODULES = ['frame.js', 'vm/protocol.js', 'vm/guest-agent.js'] as const;

/** The compiled agent files (dist/agent/... next to this module's dist/src/...), with their path on the agent disk. */
async function agentSources(): Promise<{ file: string; name: string }[]> {
  const agentDir = fileURLToPath(new URL('../../../agent/', import.meta.url));
  const files = GUEST_AGENT_MODULES.map((name) => ({ file: path.join(agentDir, name), name }));
  for (const { file } of files) await fs.access(file).catch(() => {
    throw new Error(`${file} is missing; run "npx tsc -b" first`);
  });
  return files;
}

async function resolveKernelPackage(): Promise<string> {
  const output = await run('apt-cache', ['depends', 'linux-image-amd64']);
  const match = /Depends:\s*(linux-image-[0-9][^\s]*-amd64)/.exec(output);
  if (!match?.[1]) throw new Error('cannot resolve the kernel package behind linux-image-amd64 (apt-get update?)');
  return match[1];
}

/** Module files for `wanted` and everything they depend on (modinfo `depends=`), dependencies first. */
export async function resolveModules(moduleDir: string, wanted: readonly string[]): Promise<string[]> {
  const index = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.name.endsWith('.ko')) index.set(entry.name.slice(0, -3).replace(/-/g, '_'), full);
    }
  };
  await walk(path.join(moduleDir, 'kernel'));
  const ordered: string[] = [];
  const visit = async (name: string, stack: string[]): Promise<void> => {
    const file = index.get(name.replace(/-/g, '_'));
    if (!file) throw new Error(`kernel module ${name} not found (built in? then drop it from GUEST_MODULES)`);
    if (ordered.includes(file)) return;
    if (stack.includes(name)) throw new Error(`module dependency cycle: ${[...stack, name].join(' -> ')}`);
    for (const dep of moduleDepends(await fs.readFile(file))) await visit(dep, [...stack, name]);
    ordered.push(file);
  };
  for (const name of wanted) await visit(name, []);
  return ordered;
}

/** The `depends=` list of a module's .modinfo section (NUL-separated key=value strings). */
export function moduleDepends(ko: Buffer): string[] {
  const at = ko.indexOf('\0depends=');
  if (at < 0) return [];
  const end = ko.indexOf(0, at + 1);
  const value = ko.subarray(at + '\0depends='.length, end).toString('latin1');
  return value ? value.split(',').filter(Boolean) : [];
}

/** libstdc++ and libgcc_s as node links them (ldd), so node runs on any glibc image. */
async function cxxLibraries(nodeBinary: string): Promise<string[]> {
  const output = await run('ldd', [nodeBinary]);
  return [...output.matchAll(/\s(lib(?:stdc\+\+|gcc_s)\.so\.\d+)\s=>\s(\S+)/g)].map((m) => m[2] as string);
}

async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(entry.parentPath, entry.name))).size;
  }
  return total;
}

function run(command: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString());
      else reject(new Error(`${command} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString().trim().slice(-500)}`));
    });
  });
}
