/**
 * Runtime image rootfs directories: `${imagesDir}/${short}/rootfs`, stamped by `recipe.json` (next to `rootfs/` or
 * inside it) once the build finished. An image `kindling/python[:tag]` has the short name `python`.
 *
 * `bindArgs` make bwrap's root its own tmpfs with the rootfs' top-level entries bound read-only into it one by one
 * (directories and files with `--ro-bind`, symlinks re-created with `--symlink`), remounted read-only at the end. That
 * lets bwrap create mount points that the image lacks (a work dir such as `/app`) without writing to the image. Where
 * the image's private overlay already has every mount point an execution needs, the executor binds that overlay whole
 * at `/` instead (private-mounts.ts, RunDirs.rootHas): one mount rather than one per entry.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KindlingError } from '../../core/errors.js';
import type { Logger } from '../shared/logger.js';

/** Top-level names the sandbox provides itself and never takes from the image. */
const PROVIDED = new Set(['proc', 'dev', 'sys', 'tmp', '.kindling', 'lost+found']);

export interface RootfsLayout {
  image: string;
  short: string;
  rootfs: string;
  /** bwrap arguments that rebuild `/` from the image, read-only. */
  bindArgs: string[];
  /** Top-level names bound from the image (directories, files and symlinks). */
  entries: Map<string, 'dir' | 'file' | 'symlink'>;
  /** `/bin/sh` when the image has one (used to exec the command so that a missing one is exit 127). */
  shell: string | null;
}

export function shortImageName(image: string): string | null {
  const noTag = image.replace(/:[A-Za-z0-9_.-]+$/, '');
  const short = noTag.slice(noTag.lastIndexOf('/') + 1);
  return /^[a-z0-9][a-z0-9_.-]*$/.test(short) ? short : null;
}

export function isBuilt(imagesDir: string, short: string): boolean {
  const dir = path.join(imagesDir, short);
  return (
    fs.existsSync(path.join(dir, 'rootfs', 'usr')) &&
    (fs.existsSync(path.join(dir, 'recipe.json')) || fs.existsSync(path.join(dir, 'rootfs', 'recipe.json')))
  );
}

/** Short names of every built image in `imagesDir`. */
export function listBuilt(imagesDir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(imagesDir);
  } catch {
    return [];
  }
  return names.filter((n) => shortImageName(n) === n && isBuilt(imagesDir, n)).sort();
}

export function readLayout(imagesDir: string, image: string): RootfsLayout | null {
  const short = shortImageName(image);
  if (short === null || !isBuilt(imagesDir, short)) return null;
  const rootfs = path.join(imagesDir, short, 'rootfs');
  const bindArgs: string[] = [];
  const entries = new Map<string, 'dir' | 'file' | 'symlink'>();
  for (const e of fs.readdirSync(rootfs, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    if (PROVIDED.has(e.name) || e.name === 'recipe.json') continue;
    const full = path.join(rootfs, e.name);
    if (e.isSymbolicLink()) {
      bindArgs.push('--symlink', fs.readlinkSync(full), `/${e.name}`);
      entries.set(e.name, 'symlink');
    } else if (e.isDirectory()) {
      bindArgs.push('--ro-bind', full, `/${e.name}`);
      entries.set(e.name, 'dir');
    } else if (e.isFile()) {
      bindArgs.push('--ro-bind', full, `/${e.name}`);
      entries.set(e.name, 'file');
    }
  }
  const shell = fs.existsSync(path.join(rootfs, 'bin', 'sh')) ? '/bin/sh' : null;
  return { image, short, rootfs, bindArgs, entries, shell };
}

export type WorkdirPlan =
  /** Inside the /tmp tmpfs: only needs `--dir`. */
  | { kind: 'in-tmp' }
  /** A fresh size-limited tmpfs mounted at the work dir. */
  | { kind: 'tmpfs' }
  /** `/`: read-only, nothing to mount. */
  | { kind: 'root' };

/**
 * Where the work dir's writable space comes from, or an error message when the path cannot be provided: the path
 * must be absolute and normalized, outside /proc, /dev, /sys and /.kindling, and either new at the top level or an
 * existing directory of the image (its content is then hidden by the tmpfs).
 */
export function planWorkdir(layout: RootfsLayout, workdir: string): WorkdirPlan | string {
  if (!path.isAbsolute(workdir) || path.posix.normalize(workdir) !== workdir || workdir.includes('\0')) {
    return `workdir "${workdir}" must be an absolute, normalized path`;
  }
  const clean = workdir.length > 1 && workdir.endsWith('/') ? workdir.slice(0, -1) : workdir;
  if (clean === '/') return { kind: 'root' };
  const top = clean.split('/')[1]!;
  if (top === 'tmp') return { kind: 'in-tmp' };
  if (top === 'proc' || top === 'dev' || top === 'sys' || top === '.kindling') {
    return `workdir "${workdir}" is reserved by the sandbox`;
  }
  const entry = layout.entries.get(top);
  if (entry === undefined) return { kind: 'tmpfs' };
  if (entry === 'dir') {
    try {
      const st = fs.lstatSync(path.join(layout.rootfs, clean));
      if (st.isDirectory()) return { kind: 'tmpfs' };
    } catch {
      // fall through
    }
  }
  return `workdir "${workdir}" does not exist in image ${layout.image} and cannot be created under its read-only /${top}`;
}

/** The built images of one images dir, read once and refreshed on demand; work dir plans are cached per image. */
export class RootfsCatalog {
  private readonly layouts = new Map<string, RootfsLayout>();
  private readonly workdirPlans = new Map<string, WorkdirPlan | string>();

  constructor(
    private readonly imagesDir: string,
    private readonly log: Logger,
  ) {}

  /** Image names (`kindling/<short>`) with a built rootfs. */
  names(): string[] {
    return [...this.layouts.keys()].map((s) => `kindling/${s}`);
  }

  has(image: string): boolean {
    const short = shortImageName(image);
    return short !== null && this.layouts.has(short);
  }

  /** The layout of `image`; UNKNOWN_IMAGE when it has no built rootfs. */
  layoutFor(image: string): RootfsLayout {
    const short = shortImageName(image);
    let layout = short === null ? undefined : this.layouts.get(short);
    if (layout === undefined && short !== null) {
      // Built after start-up: pick it up without waiting for a refresh.
      const fresh = readLayout(this.imagesDir, short);
      if (fresh !== null) this.layouts.set(short, (layout = fresh));
    }
    if (layout === undefined) {
      throw new KindlingError(
        'UNKNOWN_IMAGE',
        `image "${image}" has no sandbox rootfs (${path.join(this.imagesDir, short ?? '?', 'rootfs')}): build it with \`kindling images build\``,
        { details: { image, executor: 'sandbox' } },
      );
    }
    return layout;
  }

  /** How the work dir is provided; VALIDATION_FAILED when it cannot be. */
  workdirPlan(layout: RootfsLayout, workdir: string): WorkdirPlan {
    const key = `${layout.short}\0${workdir}`;
    let plan = this.workdirPlans.get(key);
    if (plan === undefined) {
      plan = planWorkdir(layout, workdir);
      if (this.workdirPlans.size > 1000) this.workdirPlans.clear();
      this.workdirPlans.set(key, plan);
    }
    if (typeof plan === 'string') {
      throw new KindlingError('VALIDATION_FAILED', plan, { details: { field: 'workdir', executor: 'sandbox' } });
    }
    return plan;
  }

  /** Re-reads the images dir: new images appear, removed ones go. */
  refresh(): void {
    const built = new Set(listBuilt(this.imagesDir));
    for (const short of this.layouts.keys()) if (!built.has(short)) this.layouts.delete(short);
    for (const short of built) {
      try {
        const layout = readLayout(this.imagesDir, short);
        if (layout !== null) this.layouts.set(short, layout);
      } catch (err) {
        this.log.warn({ image: short, err }, 'cannot read sandbox rootfs');
      }
    }
    this.workdirPlans.clear();
  }
}
