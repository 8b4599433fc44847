/**
 * Mounts whose lines in a sandbox's /proc/self/mountinfo name no host path.
 *
 * A bind mount's mountinfo line shows its source as a path inside the source's filesystem: binding
 * /var/lib/kindling/images/python/rootfs/usr shows that path to the sandbox, and binding a run dir shows the data dir.
 * Only a different filesystem changes that, so the executor (root) mounts, once per executor:
 *  - a tmpfs holding the run dirs and agent socket dirs (their lines then read `/runs/<name>`, `/agents/<id>`);
 *  - per runtime image, a read-only overlay of three layers: whiteouts of the names a sandbox never takes from an image
 *    (`hidden`), the image's rootfs, and the mount points a sandbox mounts at that an image may lack (`mountPoints`).
 *    A sandbox binds that overlay at `/` in one mount (bwrap-args.ts): one bind instead of one per top-level entry of
 *    the image, and no mount point for bwrap to make in a read-only root. The overlay's options name its layers; they
 *    are given as /proc/self/fd/N of the mount(8) process, so the options read
 *    `lowerdir=/proc/self/fd/3:/proc/self/fd/4:/proc/self/fd/5`, not the images dir.
 * Both live under `<stateDir>/sandbox/<random>` (short: agent socket paths must stay under the kernel's 108 bytes),
 * marked with the owner id in a file `owner`, and every mount is detached (`umount -l`) at close, so that sandboxes
 * still running keep what they bound. A crashed predecessor's mounts are found by owner and detached by `reapStale`.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface PrivateMountsOptions {
  /** `<stateDir>/sandbox`. */
  baseDir: string;
  ownerId: string;
  mountPath?: string;
  umountPath?: string;
  mknodPath?: string;
  /** Paths (absolute) every image root gets as empty directories and files where the image has nothing. */
  mountPoints?: { dirs: readonly string[]; files: readonly string[] };
  /** Top-level names of an image that its root hides. */
  hidden?: readonly string[];
}

/** Mount points (unescaped) listed in /proc/self/mountinfo under `dir`. */
export function mountsUnder(dir: string, mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8')): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const out: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const point = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (point === dir || point.startsWith(prefix)) out.push(point);
  }
  return out;
}

export class PrivateMounts {
  readonly root: string;
  private readonly images = new Map<string, { key: string; dir: string; ready: Promise<string> }>();
  private readonly mounted: string[] = [];
  private tmpfs: Promise<void> | null = null;
  private counter = 0;
  /** Whether the image roots hide `hidden` (whiteouts made): only then may a sandbox bind one whole at `/`. */
  masked = false;

  constructor(private readonly options: PrivateMountsOptions, instanceTag: string) {
    this.root = path.join(options.baseDir, instanceTag);
  }

  /** Mounts the tmpfs (once). Rejects when the host cannot mount (not root, no tmpfs). */
  prepare(): Promise<void> {
    this.tmpfs ??= (async () => {
      await fs.promises.mkdir(this.options.baseDir, { recursive: true, mode: 0o711 });
      await fs.promises.chmod(this.options.baseDir, 0o711);
      await fs.promises.mkdir(this.root, { recursive: true, mode: 0o711 });
      // Marked before and after mounting: a crash in between leaves a directory reapStale still recognises.
      await fs.promises.writeFile(path.join(this.root, 'owner'), this.options.ownerId, { mode: 0o600 });
      await this.mount(['-t', 'tmpfs', '-o', 'mode=0711,nosuid,nodev', 'kindling-runs', this.root]);
      await fs.promises.writeFile(path.join(this.root, 'owner'), this.options.ownerId, { mode: 0o600 });
      // The layers above and below every image, in a directory of root's: the overlays read them with the mounter's
      // credentials, nobody else needs them. The top one's mode is the mode of `/` in a sandbox that binds it whole.
      const layers = path.join(this.root, 'layers');
      await makeDir(layers, 0o700);
      const mask = path.join(layers, 'mask');
      await makeDir(mask, 0o755);
      try {
        // An overlay whiteout: a character device 0:0 hides the name in the layers below.
        for (const name of this.options.hidden ?? []) await execFileAsync(this.options.mknodPath ?? '/usr/bin/mknod', ['-m', '000', path.join(mask, name), 'c', '0', '0'], { env: {} });
        this.masked = true;
      } catch {
        // The image roots then show what rootfs.ts leaves out: sandboxes bind them entry by entry only.
      }
      const points = path.join(layers, 'mount-points');
      await makeDir(points, 0o755);
      for (const dir of this.options.mountPoints?.dirs ?? []) await makeDir(path.join(points, dir), 0o555);
      for (const file of this.options.mountPoints?.files ?? []) {
        await fs.promises.writeFile(path.join(points, file), '');
        await fs.promises.chmod(path.join(points, file), 0o444);
      }
      await fs.promises.mkdir(path.join(this.root, 'images'), { mode: 0o711 });
    })();
    return this.tmpfs;
  }

  /**
   * The directory to bind the image's entries from: an overlay of `rootfs`, made on first use and again when the
   * rootfs directory was replaced (a rebuilt image); the old overlay is detached, sandboxes using it keep it.
   */
  imageRoot(short: string, rootfs: string): Promise<string> {
    const st = fs.statSync(rootfs);
    const key = `${st.dev}:${st.ino}`;
    const current = this.images.get(short);
    if (current?.key === key) return current.ready;
    const dir = path.join(this.root, 'images', `${short}-${++this.counter}`);
    const ready = (async () => {
      await this.prepare();
      if (current !== undefined) void current.ready.then((old) => this.detach(old)).catch(() => {});
      await fs.promises.mkdir(dir, { mode: 0o755 });
      const layers = [fs.openSync(path.join(this.root, 'layers', 'mask'), 'r'), fs.openSync(rootfs, 'r'), fs.openSync(path.join(this.root, 'layers', 'mount-points'), 'r')];
      try {
        await this.mount(['-t', 'overlay', '-o', 'ro,lowerdir=/proc/self/fd/3:/proc/self/fd/4:/proc/self/fd/5', 'kindling-image', dir], layers);
      } finally {
        for (const fd of layers) fs.closeSync(fd);
      }
      return dir;
    })();
    ready.catch(() => this.images.delete(short));
    this.images.set(short, { key, dir, ready });
    return ready;
  }

  /** Detaches every mount of this instance and removes its directory (sync: runs at shutdown). */
  closeSync(): void {
    for (const dir of [...this.mounted].reverse()) this.detachSync(dir);
    this.mounted.length = 0;
    this.images.clear();
    this.tmpfs = null;
    try {
      fs.rmSync(this.root, { recursive: true, force: true });
    } catch {
      // still busy: reapStale of the next start removes it
    }
  }

  /** Detaches mounts that a crashed predecessor of the same owner left under the base dir, and their directories. */
  async reapStale(): Promise<number> {
    let names: string[] = [];
    try {
      names = await fs.promises.readdir(this.options.baseDir);
    } catch {
      return 0;
    }
    let removed = 0;
    for (const name of names) {
      const dir = path.join(this.options.baseDir, name);
      if (dir === this.root) continue;
      const owner = await fs.promises.readFile(path.join(dir, 'owner'), 'utf8').catch(() => null);
      if (owner !== this.options.ownerId) continue;
      for (const point of mountsUnder(dir).reverse()) this.detachSync(point);
      await fs.promises.rm(dir, { recursive: true, force: true }).catch(() => {});
      removed++;
    }
    return removed;
  }

  private async mount(args: string[], fds: number[] = []): Promise<void> {
    await runMount(this.options.mountPath, args, fds);
    this.mounted.push(args[args.length - 1]!);
  }

  private async detach(dir: string): Promise<void> {
    await execFileAsync(this.options.umountPath ?? '/usr/bin/umount', ['-l', dir], { env: {} }).catch(() => {});
    const i = this.mounted.indexOf(dir);
    if (i >= 0) this.mounted.splice(i, 1);
    await fs.promises.rmdir(dir).catch(() => {});
  }

  private detachSync(dir: string): void {
    spawnSync(this.options.umountPath ?? '/usr/bin/umount', ['-l', dir], { stdio: 'ignore', env: {} });
  }
}

/**
 * Runs mount(8) with `args`; `fds` become descriptors 3, 4, ... of the child, so that layers can be named as
 * /proc/self/fd/N (no host path in the mount's options, hence none in mountinfo inside a sandbox).
 */
export function runMount(mountPath: string | undefined, args: string[], fds: number[] = []): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(mountPath ?? '/usr/bin/mount', args, { stdio: ['ignore', 'ignore', 'pipe', ...fds], env: {}, cwd: '/' });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mount ${args.join(' ')} failed: ${stderr.trim()}`))));
  });
}

/** A directory of exactly `mode` (mkdir's mode is cut by the process's umask; `/` of a sandbox must not be). */
async function makeDir(dir: string, mode: number): Promise<void> {
  await fs.promises.mkdir(dir, { mode });
  await fs.promises.chmod(dir, mode);
}
