/**
 * MicroVM persistent sandbox rows (issue 16, QEMU driver), on the executor directly (no server): create (a VM booted
 * for the sandbox, its data disk made and mounted) to the first output of a command, against a plain cold boot to the
 * agent's first PONG measured alternately in the same run; one command's round trip in a running sandbox against the
 * agent's PING round trip (the channel's floor); pause + resume (QMP stop/cont); hibernate (memory to a file, the VM
 * ended) and the restore of a sandbox with a live process (a shell loop) to its next command, against the cold boot;
 * a memory snapshot of that sandbox (disk + memory, the source going on) and a new sandbox made from it to its next
 * command with the loop running on in it, against the cold boot.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { newExecutionId } from '../src/core/ids.js';
import type { RunSpec } from '../src/core/types.js';
import type { MicroVmAssets } from '../src/executors/microvm/assets.js';
import type { PersistentSandbox } from '../src/executors/executor.js';
import { MicroVmExecutor, vmMemoryMb } from '../src/executors/microvm/index.js';
import { QemuVm, hostTscKhz, kvmUsable } from '../src/executors/microvm/qemu.js';
import type { BenchContext } from './lib/context.js';
import { fmtRatio, fmtSummary, inAlternateOrder, summarize } from './lib/stats.js';
import type { Row } from './lib/table.js';

const IMAGES_DIR = '/var/lib/kindling/images';

export const SANDBOX_ROW_IDS = [
  'microvm.qemu_sandbox_create',
  'microvm.qemu_sandbox_command',
  'microvm.qemu_sandbox_pause',
  'microvm.qemu_sandbox_hibernate',
  'microvm.qemu_sandbox_restore',
  'microvm.qemu_sandbox_memory_snapshot',
  'microvm.qemu_sandbox_fork',
] as const;

function spec(): RunSpec {
  return {
    id: `bench-${newExecutionId().slice(-12)}`,
    image: 'kindling/base',
    command: [],
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8' },
    workdir: '/work',
    network: 'none',
    stdin: false,
    files: [],
    labels: {},
    limits: { timeoutMs: 3_600_000, memoryMb: 256, cpus: 1, pids: 128, outputBytes: 1 << 20, diskMb: 256, openFiles: 1024 },
  } as RunSpec;
}

/** Runs `script`; resolves with the time to its first stdout bytes and to its end, and its output. */
async function timed(sandbox: PersistentSandbox, script: string): Promise<{ firstMs: number; endMs: number; stdout: string }> {
  const started = performance.now();
  const command = await sandbox.exec({ command: ['sh', '-c', script], env: {}, workdir: '/work', stdin: false });
  let firstMs = Number.NaN;
  const out: Buffer[] = [];
  command.stdout.on('data', (chunk: Buffer) => {
    if (out.length === 0) firstMs = performance.now() - started;
    out.push(chunk);
  });
  command.stderr.resume();
  const exit = await command.wait();
  if (exit.exitCode !== 0) throw new Error(`${script} exited ${exit.exitCode}`);
  return { firstMs, endMs: performance.now() - started, stdout: Buffer.concat(out).toString() };
}

export async function microVmSandboxRows(ctx: BenchContext, assets: MicroVmAssets, n: number): Promise<{ rows: Row[]; data: unknown }> {
  const stateDir = join(ctx.workDir, 'microvm-sandboxes');
  await mkdir(stateDir, { recursive: true });
  const executor = new MicroVmExecutor({ driver: 'qemu', imagesDir: IMAGES_DIR, assetsDir: assets.dir, stateDir, ownerId: `bench-sbx-${process.pid}`, instanceId: 'bench', prewarmPerShape: 0 });
  await executor.refreshImages();
  const accel = kvmUsable() ? 'kvm' : 'tcg';
  const shape = { rootImage: join(IMAGES_DIR, 'base', 'rootfs.ext4'), vcpus: 1, memoryMb: vmMemoryMb(256, 160) };
  const creates: number[] = [];
  const boots: number[] = [];
  const commands: number[] = [];
  const pings: number[] = [];
  const pauses: number[] = [];
  const hibernates: number[] = [];
  const restores: number[] = [];
  const memorySnapshots: number[] = [];
  const forks: number[] = [];
  let imageBytes = 0;
  let snapshotBytes = 0;
  let vmCounter = 0;
  try {
    // Create -> first output, alternated with a plain boot (the raw baseline: qemu to the agent's first PONG).
    for (let i = 0; i < n; i++) {
      const bootOnce = async (): Promise<void> => {
        const started = performance.now();
        const vm = await QemuVm.start({
          config: { qemuBinary: 'qemu-system-x86_64', qemuImgBinary: 'qemu-img', assets, accel, tscKhz: accel === 'tcg' ? hostTscKhz() : null },
          shape, vmDir: join(stateDir, 'raw', `vm${vmCounter++}`), owner: `bench-sbx-${process.pid}`, name: `kindling-bench-raw-${vmCounter}`, readyTimeoutMs: 300_000,
        });
        boots.push(performance.now() - started);
        try {
          // The channel's floor for a command's round trip: the agent's PING on the same kind of VM.
          for (let j = 0; j < 10; j++) {
            const pingedAt = performance.now();
            await vm.agent.ping(10_000);
            pings.push(performance.now() - pingedAt);
          }
        } finally {
          await vm.destroy();
        }
      };
      const createOnce = async (): Promise<void> => {
        const started = performance.now();
        const sandbox = await executor.createPersistentSandbox(spec(), { storage: { fromSnapshot: null } });
        try {
          const first = await timed(sandbox, 'echo hi');
          creates.push(performance.now() - started - (first.endMs - first.firstMs));
        } finally {
          await sandbox.destroy();
          await executor.sandboxStorage!.removeDisk(sandbox.id);
        }
      };
      ctx.log(`microvm sandboxes: create round ${i + 1}/${n}`);
      await inAlternateOrder(i, createOnce, bootOnce);
    }

    // One sandbox for the rest: commands, pause/resume, hibernate/restore rounds with a live process.
    const first = spec();
    let sandbox = await executor.createPersistentSandbox(first, { storage: { fromSnapshot: null } });
    try {
      for (let i = 0; i < Math.max(20, n); i++) {
        commands.push((await timed(sandbox, 'true')).endMs);
        const pausedAt = performance.now();
        await sandbox.pause();
        await sandbox.resume();
        pauses.push(performance.now() - pausedAt);
      }
      const loop = await timed(sandbox, 'i=0; (while :; do i=$((i+1)); echo $i > /work/counter; sleep 0.2; done) >/dev/null 2>&1 & echo $!');
      const loopPid = loop.stdout.trim();
      for (let i = 0; i < n; i++) {
        ctx.log(`microvm sandboxes: hibernate round ${i + 1}/${n}`);
        const savedAt = performance.now();
        const saved = await sandbox.hibernate!();
        hibernates.push(performance.now() - savedAt);
        imageBytes = saved.bytes;
        const restoredAt = performance.now();
        sandbox = await executor.createPersistentSandbox(first, { storage: { fromSnapshot: null }, restore: 'hibernated' });
        const alive = await timed(sandbox, `kill -0 ${loopPid} && echo alive`);
        restores.push(performance.now() - restoredAt);
        if (alive.stdout !== 'alive\n') throw new Error('the process started before hibernation is gone after the restore');
      }
      for (let i = 0; i < n; i++) {
        ctx.log(`microvm sandboxes: memory snapshot + fork round ${i + 1}/${n}`);
        const snapshotId = `bench-snap-${i}-${process.pid}`;
        const snappedAt = performance.now();
        const snap = await sandbox.snapshot!(snapshotId);
        memorySnapshots.push(performance.now() - snappedAt);
        snapshotBytes = snap.bytes;
        if (snap.memory !== true) throw new Error('the snapshot kept no memory');
        const forkSpec = spec();
        const forkedAt = performance.now();
        const fork = await executor.createPersistentSandbox(forkSpec, { storage: { fromSnapshot: snapshotId } });
        try {
          const alive = await timed(fork, `kill -0 ${loopPid} && echo alive`);
          forks.push(performance.now() - forkedAt);
          if (alive.stdout !== 'alive\n') throw new Error('the process of the snapshot is not running in the sandbox made from it');
        } finally {
          await fork.destroy();
          await executor.sandboxStorage!.removeDisk(forkSpec.id);
          await executor.sandboxStorage!.removeSnapshot(snapshotId);
        }
      }
    } finally {
      await sandbox.destroy();
      await executor.sandboxStorage!.removeDisk(first.id);
    }
  } finally {
    await executor.destroy();
    await rm(stateDir, { recursive: true, force: true });
  }
  const c = summarize(creates);
  const b = summarize(boots);
  const k = summarize(commands);
  const p = summarize(pings);
  const z = summarize(pauses);
  const h = summarize(hibernates);
  const r = summarize(restores);
  const m = summarize(memorySnapshots);
  const f = summarize(forks);
  const label = accel === 'kvm' ? 'KVM' : 'TCG, no KVM';
  const rows: Row[] = [
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[0], scenario: `qemu: persistent sandbox create -> first output of \`echo hi\` (${label}), n=${n}`, target: '— (no target set)',
      kindling: fmtSummary(c), baseline: `plain boot to agent: ${fmtSummary(b)}`, ratio: fmtRatio(c.median / b.median), status: 'info',
      note: `a VM booted per sandbox (the shape snapshot cannot be used: its device set has no data disk) + a 256 MiB data disk made and mounted`,
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[1], scenario: `qemu: command round trip (\`true\`) in a running sandbox, n=${commands.length}`, target: '— (no target set)',
      kindling: fmtSummary(k), baseline: `agent PING (n=${pings.length}): ${fmtSummary(p)}`, ratio: fmtRatio(k.median / p.median), status: 'info',
      note: 'per command in the guest: a new cgroup, then sh (joins it) and setpriv (drops to nobody) exec into the command',
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[2], scenario: `qemu: pause + resume (QMP stop/cont), n=${pauses.length}`, target: '— (no target set)',
      kindling: fmtSummary(z), baseline: '—', ratio: '—', status: 'info',
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[3], scenario: `qemu: hibernate (QMP stop + migrate to a file, VM ended), n=${n}`, target: '— (no target set)',
      kindling: fmtSummary(h), baseline: '—', ratio: '—', status: 'info', note: `memory image ${Math.round(imageBytes / (1 << 20))} MiB (${shape.memoryMb} MiB VM)`,
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[4], scenario: `qemu: restore a hibernated sandbox with a live process -> next command done (${label}), n=${n}`, target: '— (no target set)',
      kindling: fmtSummary(r), baseline: `plain boot to agent: ${fmtSummary(b)}`, ratio: `${fmtRatio(b.median / r.median)} faster`, status: 'info',
      note: 'the shell loop started before the first hibernation is alive after every restore',
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[5], scenario: `qemu: memory snapshot of a sandbox with a live process (disk copied + memory migrated to a file, the source going on), n=${n}`, target: 'measured (issue 16)',
      kindling: fmtSummary(m), baseline: '—', ratio: '—', status: 'info', note: `snapshot ${Math.round(snapshotBytes / (1 << 20))} MiB (disk and memory, ${shape.memoryMb} MiB VM)`,
    },
    {
      group: 'microvm', id: SANDBOX_ROW_IDS[6], scenario: `qemu: sandbox from that memory snapshot -> next command done, the process running on in it (${label}), n=${n}`, target: 'fork < cold start (issue 16)',
      kindling: fmtSummary(f), baseline: `plain boot to agent: ${fmtSummary(b)}`, ratio: `${fmtRatio(b.median / f.median)} faster`, status: f.median < b.median ? 'pass' : 'fail',
      note: 'an overlay of the snapshot\'s disk + qemu -incoming from its memory file (shared by every sandbox made from it), RNG reseeded, clock set',
    },
  ];
  return {
    rows,
    data: { creates, boots, commands, pings, pauses, hibernates, restores, memorySnapshots, forks, imageBytes, snapshotBytes, summary: { create: c, boot: b, command: k, ping: p, pause: z, hibernate: h, restore: r, memorySnapshot: m, fork: f } },
  };
}
