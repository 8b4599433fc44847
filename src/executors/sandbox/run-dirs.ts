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
import type { ImageBinds } from './bwrap-args.js';
import { PrivateMounts } from './private-mounts.js';
import type { RootfsLayout } from './rootfs.js';

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
  /** tmpfs for run/agent dirs and an overlay per image, so that mountinfo inside names no host path. */
  private readonly mounts: PrivateMounts;
  private ready: Promise<void> | null = null;
  /** Why the private tmpfs could not be mounted (plain directories are used then), or null. */
  privateMountsFailed: string | null = null;
  private readonly imageRootFailed = new Set<string>();

  constructor(
    options: { baseDir: string; ownerId: string },
    private readonly gid: number,
    private readonly log: Logger,
  ) {
    this.mounts = new PrivateMounts(options, randomBytes(3).toString('hex'));
    this.runsDir = path.join(this.mounts.root, 'runs');
    this.agentsDir = path.join(this.mounts.root, 'agents');
    this.volumesDir = path.join(this.mounts.root, 'volumes');
    this.binDir = path.join(this.mounts.root, 'bin');
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
    return { bindArgs, shell: layout.shell };
  }

  /** /.kindling content: a per-execution directory bound read-only (root:sandbox gid, files 0440, the dir 0550). */
  async writeFiles(name: string, spec: RunSpec): Promise<string> {
    await this.ensure();
    const dir = path.join(this.runsDir, name);
    await fs.promises.mkdir(dir, { mode: 0o700 });
    await Promise.all(
      spec.files.map(async (f) => {
        const file = path.join(dir, f.name);
        await fs.promises.writeFile(file, f.content, { mode: 0o400 });
        await fs.promises.chown(file, 0, this.gid);
        await fs.promises.chmod(file, 0o440);
      }),
    );
    await fs.promises.chown(dir, 0, this.gid);
    await fs.promises.chmod(dir, 0o550);
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
