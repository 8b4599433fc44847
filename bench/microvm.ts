/**
 * MicroVM rows (issue 8), per driver: cold boot to agent-ready, restore-from-snapshot to agent-ready (including the RNG
 * reseed every restored VM gets), both measured on the VM objects directly and alternated in one run; and `echo hi`
 * through the API on `--executor microvm` (VMs restored from the shape's snapshot, kept warm by the executor's pool).
 * Firecracker rows print "skipped: <reason>" where it cannot run (no usable KVM, no firecracker binary). QEMU also gets
 * the persistent sandbox rows of microvm-sandboxes.ts (create, command, pause, hibernate, restore vs a cold boot).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readAssets, DEFAULT_MICROVM_ASSETS_DIR, type MicroVmAssets } from '../src/executors/microvm/assets.js';
import { FirecrackerVm, firecrackerBootArgs, firecrackerUnavailable, snapshotFiles } from '../src/executors/microvm/firecracker.js';
import type { MicroVm } from '../src/executors/microvm/index.js';
import { vmMemoryMb } from '../src/executors/microvm/index.js';
import { QemuVm, hostTscKhz, kvmUsable, type VmShape } from '../src/executors/microvm/qemu.js';
import { BenchClient, type TimedExecute } from './lib/client.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { deploy, invoke } from './lib/functions.js';
import { launchServer } from './lib/server.js';
import { fmtMs, fmtRatio, fmtSummary, inAlternateOrder, summarize } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';
import { microVmSandboxRows } from './microvm-sandboxes.js';

type Driver = 'qemu' | 'firecracker';
const IMAGES_DIR = '/var/lib/kindling/images';
const ROOT_IMAGE = join(IMAGES_DIR, 'base', 'rootfs.ext4');

const rowMeta = (driver: Driver) => ({
  boot: { id: `microvm.${driver}_boot`, scenario: `${driver}: cold boot to agent-ready`, target: '— (baseline for restore)' },
  restore: { id: `microvm.${driver}_restore`, scenario: `${driver}: restore from snapshot to agent-ready (+ RNG reseed)`, target: '≥ 5x faster than cold boot' },
  echo: { id: `microvm.${driver}_api_echo`, scenario: `${driver}: \`echo hi\` via API, --executor microvm (restored VM)`, target: '— (no target set)' },
  bundle: {
    id: `microvm.${driver}_bundle_call`,
    scenario: `${driver}: call of a python command bundle (its files a read-only disk of the VM, restored from the function's snapshot)`,
    target: '< 2x the `echo hi` execution (issue 21)',
  },
});

function skipDriver(driver: Driver, reason: string): Row[] {
  return Object.values(rowMeta(driver)).map((meta) => skippedRow('microvm', meta.id, meta.scenario, meta.target, reason));
}

function errorRows(driver: Driver, message: string): Row[] {
  return Object.values(rowMeta(driver)).map((meta) => ({
    group: 'microvm' as const, id: meta.id, scenario: meta.scenario, target: meta.target,
    kindling: `error: ${message.slice(0, 160)}`, baseline: '—', ratio: '—', status: 'error' as const,
  }));
}

function startVm(driver: Driver, assets: MicroVmAssets, shape: VmShape, vmDir: string, incoming?: string): Promise<MicroVm> {
  const common = { shape, vmDir, owner: `bench-${process.pid}`, name: `kindling-bench-${vmDir.split('/').pop() ?? 'vm'}`, readyTimeoutMs: 300_000, ...(incoming ? { incoming } : {}) };
  if (driver === 'firecracker') {
    return FirecrackerVm.start({
      ...common,
      config: { firecrackerBinary: 'firecracker', kernel: assets.vmlinux as string, initramfs: assets.initramfs, agentDisk: assets.agentDisk, bootArgs: firecrackerBootArgs() },
    });
  }
  const accel = kvmUsable() ? 'kvm' : 'tcg';
  return QemuVm.start({
    ...common,
    config: { qemuBinary: 'qemu-system-x86_64', qemuImgBinary: 'qemu-img', assets, accel, tscKhz: accel === 'tcg' ? hostTscKhz() : null },
  });
}

/** Boot vs restore on the VM objects, alternated; one template boot writes the snapshot first. */
async function bootVsRestore(ctx: BenchContext, driver: Driver, assets: MicroVmAssets, n: number): Promise<{ rows: Row[]; data: unknown }> {
  const meta = rowMeta(driver);
  const shape: VmShape = { rootImage: ROOT_IMAGE, vcpus: 1, memoryMb: vmMemoryMb(256, 160) };
  const dir = join(ctx.workDir, `microvm-${driver}`);
  const snapshot = join(dir, 'snapshot.vmstate');
  let counter = 0;
  const vmDir = (): string => join(dir, 'vms', `vm${counter++}`);
  ctx.log(`microvm ${driver}: template boot and snapshot (${shape.memoryMb} MiB, 1 vCPU)`);
  const template = await startVm(driver, assets, shape, vmDir());
  try {
    await template.snapshot(snapshot);
  } finally {
    await template.destroy();
  }
  const boots: number[] = [];
  const restores: number[] = [];
  const restoreReady: number[] = [];
  let distinct = 0;
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const runBoot = async (): Promise<void> => {
      const vm = await startVm(driver, assets, shape, vmDir());
      try {
        boots.push(vm.readyMs);
      } finally {
        await vm.destroy();
      }
    };
    const runRestore = async (): Promise<void> => {
      const started = performance.now();
      const vm = await startVm(driver, assets, shape, vmDir(), snapshot);
      try {
        const ready = vm.readyMs;
        const seeded = await vm.agent.seed(randomBytes(64));
        restores.push(performance.now() - started);
        restoreReady.push(ready);
        if (!seeded.reseeded) throw new Error('the guest did not reseed its CRNG after the restore');
        // Different RNG output in every clone (checked on the side, outside the timing).
        const probe = vm.agent.getFile('/proc/sys/kernel/random/uuid');
        const uuid = (await probe).toString().trim();
        if (!seen.has(uuid)) distinct++;
        seen.add(uuid);
      } finally {
        await vm.destroy();
      }
    };
    ctx.log(`microvm ${driver}: round ${i + 1}/${n}`);
    await inAlternateOrder(i, runBoot, runRestore);
  }
  await rm(snapshot, { force: true });
  await rm(snapshotFiles(snapshot).memory, { force: true });
  const b = summarize(boots);
  const r = summarize(restores);
  const speedup = b.median / r.median;
  const accel = driver === 'qemu' ? (kvmUsable() ? 'KVM' : 'TCG, no KVM') : 'KVM';
  return {
    rows: [
      { group: 'microvm', id: meta.boot.id, scenario: `${meta.boot.scenario} (${accel}), n=${n}`, target: meta.boot.target, kindling: fmtSummary(b), baseline: '—', ratio: '—', status: 'info', note: `${shape.memoryMb} MiB, 1 vCPU, kernel ${assets.stamp.kernelVersion}, initramfs + agent disk` },
      {
        group: 'microvm', id: meta.restore.id, scenario: `${meta.restore.scenario} (${accel}), n=${n}`, target: meta.restore.target,
        kindling: fmtSummary(r), baseline: `cold boot: ${fmtSummary(b)}`, ratio: `${fmtRatio(speedup)} faster`,
        status: speedup >= 5 ? 'pass' : 'fail',
        note: `to first PONG ${fmtMs(summarize(restoreReady).median)} + reseed; distinct /proc/sys/kernel/random/uuid in ${distinct}/${n} clones`,
      },
    ],
    data: { boots, restores, restoreReady, distinct, summary: { boot: b, restore: r, speedup } },
  };
}

/**
 * A python bundle of two modules and a data file, deployed as a command on microvm: its first call makes the bundle's
 * disk and the function's snapshot; then n calls, each in a fresh VM, against the `echo` execution's p50 (`echoMs`).
 */
async function bundleCalls(ctx: BenchContext, driver: Driver, url: string, n: number, echoMs: number): Promise<{ row: Row; data: unknown }> {
  const meta = rowMeta(driver).bundle;
  const dir = await mkdtemp(join(tmpdir(), 'kindling-bench-vm-bundle-'));
  try {
    await mkdir(join(dir, 'lib'));
    await writeFile(join(dir, 'main.py'), 'import sys\nfrom lib.words import count\nprint(sys.stdin.read(), count())\n');
    await writeFile(join(dir, 'lib', '__init__.py'), '');
    await writeFile(join(dir, 'lib', 'words.py'), 'import pathlib\n\ndef count():\n    return len(pathlib.Path("words.txt").read_text().split())\n');
    await writeFile(join(dir, 'words.txt'), 'one two three\n');
    const tar = execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
    await deploy(url, 'vm-bundle', tar, { runtime: 'python', command: ['python3', 'main.py'], executor: 'microvm', timeoutMs: 120_000 });
    ctx.log(`microvm ${driver}: bundle warm-up (first call makes its disk, boots its template and writes its snapshot)`);
    const first = await invoke(url, 'vm-bundle');
    if (first.body !== 'x 3\n') throw new Error(`the bundle answered ${JSON.stringify(first.body.slice(0, 200))}`);
    const samples: number[] = [];
    for (let i = 0; i < n; i++) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      samples.push((await invoke(url, 'vm-bundle')).ms);
    }
    const k = summarize(samples);
    const ratio = k.median / echoMs;
    return {
      row: {
        group: 'microvm', id: meta.id, scenario: `${meta.scenario}, n=${n}`, target: meta.target, kindling: fmtSummary(k),
        baseline: `p50 ${fmtMs(echoMs)} (\`echo hi\` execution, same server)`, ratio: fmtRatio(ratio), status: ratio < 2 ? 'pass' : 'fail',
        note: `first call (disk + template boot + snapshot + restore) ${fmtMs(first.ms)}`,
      },
      data: { firstMs: first.ms, samples, summary: k, echoMs },
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function apiEcho(ctx: BenchContext, driver: Driver, assetsDir: string, n: number): Promise<{ row: Row; rows: Row[]; data: unknown; bundle: unknown }> {
  const meta = rowMeta(driver).echo;
  const server = await launchServer({
    repoRoot: ctx.repoRoot,
    executor: 'microvm',
    prewarm: 1,
    env: { KINDLING_MICROVM_ASSETS_DIR: assetsDir, KINDLING_MICROVM_DRIVER: driver },
    startTimeoutMs: 120_000,
  });
  const client = new BenchClient(server.url);
  try {
    const spec = { image: 'kindling/base', command: ['echo', 'hi'], executor: 'microvm', timeoutMs: 120_000 };
    ctx.log(`microvm ${driver}: API echo warm-up (first call boots the template and writes the snapshot)`);
    const warmup = await client.executeOk(spec);
    const samples: TimedExecute[] = [];
    for (let i = 0; i < n; i++) {
      // Give the pool time to restore the next VM ahead of demand, as between real requests.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const timed = await client.executeOk(spec);
      if (timed.result.stdout !== 'hi\n') throw new Error(`expected "hi\\n", got ${JSON.stringify(timed.result.stdout)}`);
      samples.push(timed);
    }
    const k = summarize(samples.map((sample) => sample.ms));
    const cold = samples.filter((sample) => sample.result.coldStart).length;
    const bundle = await bundleCalls(ctx, driver, server.url, n, k.median);
    return {
      rows: [bundle.row],
      bundle: bundle.data,
      row: {
        group: 'microvm', id: meta.id, scenario: `${meta.scenario}, n=${n}`, target: meta.target, kindling: fmtSummary(k), baseline: '—', ratio: '—', status: 'info',
        note: `restored on demand (not from the warm pool) in ${cold}/${n}; first call (template boot + snapshot + restore) ${fmtMs(warmup.ms)}`,
      },
      data: { warmupMs: warmup.ms, samples: samples.map((sample) => ({ ms: sample.ms, coldStart: sample.result.coldStart, durationMs: sample.result.durationMs })), summary: k },
    };
  } finally {
    client.close();
    await server.stop();
  }
}

export async function runMicroVmGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runs.microvm;
  // The bench is a script, like main.ts: it may read where the assets are.
  const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR ?? DEFAULT_MICROVM_ASSETS_DIR;
  const assets = await readAssets(assetsDir);
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  for (const driver of ['qemu', 'firecracker'] as const) {
    let reason: string | null = null;
    if (!assets) reason = `no microvm assets in ${assetsDir}; run "kindling images build --microvm"`;
    else if (!existsSync(ROOT_IMAGE)) reason = `no ${ROOT_IMAGE}`;
    else if (driver === 'firecracker') reason = firecrackerUnavailable('firecracker', kvmUsable()) ?? (assets.vmlinux ? null : 'the assets have no vmlinux');
    if (reason || !assets) {
      ctx.log(`microvm ${driver}: skipped: ${reason}`);
      rows.push(...skipDriver(driver, String(reason)));
      data[driver] = { skipped: reason };
      continue;
    }
    try {
      const direct = await bootVsRestore(ctx, driver, assets, n);
      rows.push(...direct.rows);
      const echo = await apiEcho(ctx, driver, assetsDir, Math.max(n, 5));
      rows.push(echo.row, ...echo.rows);
      data[driver] = { direct: direct.data, echo: echo.data, bundle: echo.bundle };
      if (driver === 'qemu') {
        const sandboxes = await microVmSandboxRows(ctx, assets, n);
        rows.push(...sandboxes.rows);
        data.qemuSandboxes = sandboxes.data;
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      ctx.log(`microvm ${driver} failed: ${message}`);
      const done = new Set(rows.map((row) => row.id));
      rows.push(...errorRows(driver, message).filter((row) => !done.has(row.id)));
      data[driver] = { error: message };
    }
  }
  return { rows, data };
}
