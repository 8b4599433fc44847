/**
 * The host directories the sandboxes see, all under the executor's private mounts (see private-mounts.ts): a run dir
 * per execution with its /.kindling files, an agent dir per warm sandbox, and each image's rootfs through a private
 * overlay. The run and agent dirs belong to root and the sandbox gid: bwrap (as the sandbox uid) can reach them, other
 * users of the host cannot list, read or connect to anything under them (code, payloads, agent sockets).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunSpec } from '../../core/types.js';
import type { Logger } from '../shared/logger.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { SUPERVISOR_MOUNT, type ImageBinds, type MountTarget } from './bwrap-args.js';
import { PrivateMounts } from './private-mounts.js';
import type { RootfsLayout } from './rootfs.js';

/**
 * Mount points every image root gets where the image has none: those of every sandbox (bwrap-args.ts), the default
 * work dir, the agent dir of warm sandboxes and the supervisor of persistent ones. An execution that mounts anywhere
 * else the image lacks binds the image entry by entry instead, as before (bwrap makes its mount points in a tmpfs).
 */
const MOUNT_POINTS = { dirs: ['/proc', '/dev', '/tmp', '/.kindling', '/work', AGENT_MOUNT], files: [SUPERVISOR_MOUNT] };
/** Names of an image's top level a sandbox does not see (rootfs.ts binds none of them either). */
const HIDDEN = ['sys', 'lost+found', 'recipe.json'];
/**
 * Mount points that are not always mounted over: without files an execution gets an empty /.kindling (`--dir`), so an
 * image whose /.kindling has anything in it is bound entry by entry (the image's /.kindling is never bound then).
 */
const EMPTY_POINTS = new Set(['/.kindling']);
/** Answers of rootHas kept; started over when full (work dirs are the callers' choice). */
const MAX_ROOT_CHECKS = 512;

export class RunDirs {
  readonly runsDir: string;
  readonly agentsDir: string;
  /** Mount points of persistent sandboxes' disks (see storage.ts), root 0711. */
  readonly volumesDir: string;
  /**
   * Programs bound into sandboxes (the native supervisor, see SandboxExecutor.supervisor()), root 0711: bwrap runs as
   * the sandbox uid and must reach a bind's source, which the server's own install dir may not allow (/root is 0700).
   */
  readonly binDir: string;
  /** Where the server listens for its launchers' streams (see launch-service.ts): root's, no one else may connect. */
  readonly launchSocketPath: string;
  /** tmpfs for run/agent dirs and an overlay per image, so that mountinfo inside names no host path. */
  private readonly mounts: PrivateMounts;
  private ready: Promise<void> | null = null;
  /** Why the private tmpfs could not be mounted (plain directories are used then), or null. */
  privateMountsFailed: string | null = null;
  private readonly imageRootFailed = new Set<string>();
  private readonly rootChecks = new Map<string, boolean>();

  constructor(
    options: { baseDir: string; ownerId: string },
    private readonly gid: number,
    private readonly log: Logger,
  ) {
    this.mounts = new PrivateMounts({ ...options, mountPoints: MOUNT_POINTS, hidden: HIDDEN }, randomBytes(3).toString('hex'));
    this.runsDir = path.join(this.mounts.root, 'runs');
    this.agentsDir = path.join(this.mounts.root, 'agents');
    this.volumesDir = path.join(this.mounts.root, 'volumes');
    this.binDir = path.join(this.mounts.root, 'bin');
    this.launchSocketPath = path.join(this.mounts.root, 'launch', 'launch.sock');
  }

  /** Mounts and creates the dirs once (again after a failure). */
  ensure(): Promise<void> {
    this.ready ??= (async () => {
      try {
        await this.mounts.prepare();
      } catch (err) {
        // Plain directories then: everything works, but mountinfo inside names the data dir (reported by probe()).
        this.privateMountsFailed = `no private tmpfs for run dirs: ${(err as Error).message}`;
        this.log.warn({ err }, 'sandbox run dirs are plain directories: mountinfo inside sandboxes shows their host path');
      }
      const base = this.mounts.root;
      fs.mkdirSync(base, { recursive: true, mode: 0o711 });
      fs.chmodSync(base, 0o711);
      for (const dir of [this.runsDir, this.agentsDir]) {
        fs.mkdirSync(dir, { recursive: true, mode: 0o710 });
        fs.chownSync(dir, 0, this.gid);
        fs.chmodSync(dir, 0o710);
      }
      for (const dir of [this.volumesDir, this.binDir]) {
        fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
        fs.chmodSync(dir, 0o711);
      }
      // Root's only: whatever mode the socket file gets (the process's umask), nobody else can reach it.
      const launchDir = path.dirname(this.launchSocketPath);
      fs.mkdirSync(launchDir, { recursive: true, mode: 0o700 });
      fs.chmodSync(launchDir, 0o700);
    })();
    this.ready.catch(() => (this.ready = null));
    return this.ready;
  }

  /** The image's bind arguments with sources in its private overlay (the rootfs itself when that cannot be mounted). */
  async imageBinds(layout: RootfsLayout): Promise<ImageBinds> {
    await this.ensure();
    if (this.privateMountsFailed !== null || this.imageRootFailed.has(layout.rootfs)) return layout;
    let root: string;
    try {
      root = await this.mounts.imageRoot(layout.short, layout.rootfs);
    } catch (err) {
      this.imageRootFailed.add(layout.rootfs);
      this.log.warn({ err, image: layout.short }, 'no private overlay for the image: mountinfo inside sandboxes shows the images dir');
      return layout;
    }
    const prefix = `${layout.rootfs}/`;
    const bindArgs = layout.bindArgs.map((arg, i) =>
      layout.bindArgs[i - 1] === '--ro-bind' && arg.startsWith(prefix) ? path.join(root, arg.slice(prefix.length)) : arg,
    );
    return { bindArgs, shell: layout.shell, ...(this.mounts.masked ? { root } : {}) };
  }

  /**
   * Whether the image root `root` has a mount point for each target: a real directory, or a regular file for a bind of
   * a file, every component on the way a real directory (no link of the image followed on the host).
   */
  rootHas(root: string, targets: readonly MountTarget[]): boolean {
    return targets.every((t) => {
      let kind: 'dir' | 'file';
      try {
        kind = t.source === null || fs.statSync(t.source).isDirectory() ? 'dir' : 'file';
      } catch {
        return false;
      }
      const key = `${root}\0${t.target}\0${kind}`;
      let has = this.rootChecks.get(key);
      if (has === undefined) {
        has = mountPointIn(root, t.target, kind) && (!EMPTY_POINTS.has(t.target) || isEmptyDir(path.join(root, t.target)));
        if (this.rootChecks.size >= MAX_ROOT_CHECKS) this.rootChecks.clear();
        this.rootChecks.set(key, has);
      }
      return has;
    });
  }

  /** /.kindling content: a per-execution directory bound read-only (root:sandbox gid, files 0440, the dir 0550). */
  async writeFiles(name: string, spec: RunSpec): Promise<string> {
    await this.ensure();
    const dir = path.join(this.runsDir, name);
    // Synchronous: a code file or two on the run dirs' tmpfs take microseconds, where the same steps as thread-pool
    // trips (mkdir, then write, chown and chmod per file, chown and chmod of the dir) took the event loop through six
    // or more callbacks on every code execution's start.
    fs.mkdirSync(dir, { mode: 0o700 });
    try {
      for (const f of spec.files) {
        const fd = fs.openSync(path.join(dir, f.name), 'wx', 0o400);
        try {
          fs.writeFileSync(fd, f.content);
          fs.fchownSync(fd, 0, this.gid);
          fs.fchmodSync(fd, 0o440);
        } finally {
          fs.closeSync(fd);
        }
      }
      fs.chownSync(dir, 0, this.gid);
      fs.chmodSync(dir, 0o550);
    } catch (error) {
      // The caller has no run dir to release when this throws.
      await removeFlatDir(dir);
      throw error;
    }
    return dir;
  }

  /**
   * Removes what a crashed predecessor of this owner left: its private mounts, run dirs not in `liveRuns` and agent
   * dirs (named after their spec id) not in `liveAgents`.
   */
  async reap(liveRuns: ReadonlySet<string>, liveAgents: ReadonlySet<string>, owner: string): Promise<void> {
    const staleMounts = await this.mounts.reapStale();
    if (staleMounts > 0) this.log.info({ owner, dirs: staleMounts }, 'reaped leftover sandbox mounts');
    for (const name of await readdirOrEmpty(this.runsDir)) {
      if (liveRuns.has(name)) continue;
      await fs.promises.rm(path.join(this.runsDir, name), { recursive: true, force: true });
      this.log.info({ sandbox: name, owner }, 'reaped leftover sandbox run dir');
    }
    // None survive their server.
    for (const name of await readdirOrEmpty(this.agentsDir)) {
      if (liveAgents.has(name)) continue;
      await fs.promises.rm(path.join(this.agentsDir, name), { recursive: true, force: true });
    }
  }

  /** Unmounts and removes the dirs (once nothing runs any more). */
  closeSync(): void {
    if (this.ready === null) return;
    this.mounts.closeSync();
    try {
      fs.rmdirSync(path.dirname(this.mounts.root));
    } catch {
      // not empty (another instance) or gone
    }
    this.ready = null;
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.promises.readdir(dir);
  } catch {
    return []; // nothing ran yet
  }
}

/**
 * Removes a run dir of files (no subdirectories) synchronously: a readdir, an unlink per file and an rmdir, where a
 * recursive rm goes through the thread pool for each step. Anything else (a subdirectory, an error) is left to a
 * recursive rm (the promise settles when it is done).
 */
export function removeFlatDir(dir: string): Promise<void> {
  try {
    const entries = fs.readdirSync(dir, { withFileTypes: true });
    if (entries.some((entry) => entry.isDirectory())) throw new Error('not flat');
    for (const entry of entries) fs.unlinkSync(path.join(dir, entry.name));
    fs.rmdirSync(dir);
    return Promise.resolve();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' && !fs.existsSync(dir)) return Promise.resolve();
    return fs.promises.rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/** `target` (absolute) in `root`: each component lstat'ed, directories all the way, the last one of `kind`. */
function mountPointIn(root: string, target: string, kind: 'dir' | 'file'): boolean {
  const parts = target.split('/').filter(Boolean);
  if (parts.length === 0 || parts.some((part) => part === '.' || part === '..')) return false;
  let current = root;
  for (const [i, part] of parts.entries()) {
    current = path.join(current, part);
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(current);
    } catch {
      return false;
    }
    const last = i === parts.length - 1;
    if (!(last && kind === 'file' ? stat.isFile() : stat.isDirectory())) return false;
  }
  return true;
}

function isEmptyDir(dir: string): boolean {
  try {
    return fs.readdirSync(dir).length === 0;
  } catch {
    return false;
  }
}
