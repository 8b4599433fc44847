// Over 400 lines on purpose: the v1 and v2 drivers implement one interface side by side, and read best together.
/**
 * One fresh cgroup per execution, on cgroup v1 (one directory per controller: memory, cpu, pids, freezer) or v2 (one
 * unified directory), behind one small interface. Paths: v1 `<mount>/<controller>/<parent>/<owner>/<name>`, v2
 * `<mount>/<parent>/<owner>/<name>`; `<owner>` names the server's data dir so a reaper only touches its own.
 *
 * The files here are in-kernel (cgroupfs), so creation and reads use synchronous calls: each takes microseconds and
 * avoids a thread-pool round trip on the start path. Waiting (kill loops, rmdir retries) is asynchronous.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { KindlingError } from '../../core/errors.js';
import { openUsageV1, openUsageV2, removeCgroupDir, type CgroupUsage } from './cgroupfs.js';

export interface CgroupLimits {
  memoryBytes: number;
  /** CPU quota in cores (0.5 = half a core). */
  cpus: number;
  pidsMax: number;
}

export interface Cgroup {
  readonly name: string;
  /** Writing a pid into each of these files moves that process (and its future children) into the cgroup. */
  readonly procsFiles: readonly string[];
  /** The directories that make up this cgroup (one per v1 controller, one on v2). */
  readonly dirs: readonly string[];
  /** Pids currently in the cgroup (host pid namespace). */
  pids(): number[];
  /** How many processes the kernel's OOM killer killed in this cgroup so far. */
  oomKills(): number;
  /** CPU time and peak memory the kernel accounted to this cgroup so far (null: not available here). */
  usage(): CgroupUsage;
  /** Kills every process in the cgroup, repeating until it is empty (catches forks racing the kill). */
  kill(): Promise<void>;
  /**
   * Freezes (true) or thaws (false) every process of the cgroup, resolving once the kernel reports the state reached
   * (v1 freezer.state FROZEN/THAWED, v2 cgroup.events `frozen`). A frozen cgroup uses no CPU. Persistent sandboxes.
   */
  freeze(frozen: boolean): Promise<void>;
  /** Sets (or changes) the limits; synchronous, microseconds. */
  applyLimits(limits: CgroupLimits): void;
  /** Kills what is left and removes the directories. Safe to call twice. */
  remove(): Promise<void>;
}

export interface CgroupDriver {
  readonly version: 1 | 2;
  /** Where this driver's cgroups for this owner live (one path per controller on v1). */
  readonly ownerDirs: readonly string[];
  /** Null when usable, else why not (for probe()). */
  check(): string | null;
  /** Makes a fresh cgroup, with `limits` when given (else unlimited until `applyLimits`). */
  create(name: string, limits?: CgroupLimits): Cgroup;
  /** A handle on an existing cgroup of this owner (for the reaper). */
  open(name: string): Cgroup;
  /** Names of this owner's cgroups that exist now. */
  list(): string[];
  /** Removes the owner's (and the shared parent's) directories when they are empty; never fails. */
  removeOwnerDirs(): void;
}

export interface CgroupOptions {
  /** Where cgroupfs is mounted. Default /sys/fs/cgroup. */
  mount?: string;
  /** Directory under the hierarchy root that holds all Kindling cgroups. Default `kindling`. */
  parent?: string;
  ownerId: string;
  /** Force a version (tests); default: v2 when `<mount>/cgroup.controllers` exists, else v1. */
  version?: 1 | 2;
  /**
   * v2 only, for tests on hybrid hosts: allow a hierarchy without the memory/cpu/pids controllers and skip those
   * limits. Never set in production.
   */
  allowMissingControllers?: boolean;
}

const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const CPU_PERIOD_US = 100_000;

export function assertSafeName(kind: string, name: string): void {
  if (!SAFE_NAME.test(name)) throw new Error(`${kind} "${name}" must match ${SAFE_NAME}`);
}

export function detectCgroupVersion(mount = '/sys/fs/cgroup'): 1 | 2 {
  return fs.existsSync(path.join(mount, 'cgroup.controllers')) ? 2 : 1;
}

export function createCgroupDriver(options: CgroupOptions): CgroupDriver {
  const mount = options.mount ?? '/sys/fs/cgroup';
  const parent = options.parent ?? 'kindling';
  assertSafeName('cgroup owner', options.ownerId);
  assertSafeName('cgroup parent', parent);
  const version = options.version ?? detectCgroupVersion(mount);
  return version === 2
    ? new CgroupV2Driver(mount, parent, options.ownerId, options.allowMissingControllers ?? false)
    : new CgroupV1Driver(mount, parent, options.ownerId);
}

/**
 * An executor's cgroup driver, made and checked on first use rather than in the executor's constructor, so that a host
 * without usable cgroups makes the executor report itself unavailable instead of failing to construct.
 */
export class LazyCgroupDriver {
  private made: CgroupDriver | null = null;

  constructor(
    private readonly options: CgroupOptions,
    private readonly executorName: string,
  ) {}

  /** The driver once made (nothing is attempted). */
  get current(): CgroupDriver | null {
    return this.made;
  }

  /** The driver; throws the reason when cgroups cannot be used here. */
  get(): CgroupDriver {
    if (this.made !== null) return this.made;
    const driver = createCgroupDriver(this.options);
    const problem = driver.check();
    if (problem !== null) throw new Error(problem);
    this.made = driver;
    return driver;
  }

  tryGet(): CgroupDriver | null {
    try {
      return this.get();
    } catch {
      return null;
    }
  }

  /** The driver, or EXECUTOR_UNAVAILABLE naming the executor and the reason. */
  getOrUnavailable(): CgroupDriver {
    try {
      return this.get();
    } catch (err) {
      throw new KindlingError('EXECUTOR_UNAVAILABLE', `${this.executorName} executor unavailable: ${(err as Error).message}`, { cause: err });
    }
  }
}

/* ---------------------------------------------------------------------------------------------------------------- */

function writeFile(file: string, value: string): void {
  fs.writeFileSync(file, value);
}

function readFile(file: string): string {
  return fs.readFileSync(file, 'utf8');
}

function readPids(file: string): number[] {
  let text: string;
  try {
    text = readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: number[] = [];
  // A process outside this server's pid namespace reads as 0: never a pid to signal (kill(0) is the own group).
  for (const line of text.split('\n')) if (line !== '' && Number(line) > 0) out.push(Number(line));
  return out;
}

/** `key value` lines (memory.events, memory.oom_control). */
function readKeyed(file: string, key: string): number {
  try {
    for (const line of readFile(file).split('\n')) {
      const [k, v] = line.split(' ');
      if (k === key) return Number(v);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return 0;
}

/** rmdir each in order, stopping at the first that is busy or not empty (another owner's cgroups, a live one). */
function rmdirQuiet(...dirs: string[]): void {
  for (const dir of dirs) if (!removeCgroupDir(dir)) return;
}

/** mkdir of a cgroup; when the reaper of another run (or an admin) removed a parent, the parents are made again once. */
function mkdirCgroup(dir: string, ensureParents: () => void): void {
  try {
    fs.mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    ensureParents();
    fs.mkdirSync(dir);
  }
}

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // ESRCH: already gone
    }
  }
}

/**
 * Kills and removes the directories, retrying while the kernel says EBUSY (a process that joined after the last kill,
 * or one still exiting).
 */
async function killAndRemove(dirs: readonly string[], kill: () => Promise<void>): Promise<void> {
  const left = new Set(dirs);
  for (let attempt = 0; left.size > 0; attempt++) {
    await kill();
    for (const dir of [...left]) {
      try {
        await fs.promises.rmdir(dir);
        left.delete(dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') left.delete(dir);
        else if (code !== 'EBUSY' || attempt >= 60) throw err;
      }
    }
    if (left.size > 0) await sleep(Math.min(5 * (attempt + 1), 50));
  }
}

/** Repeats `once` until `empty()` holds; throws after ~5 s so a stuck cgroup is reported, not waited on forever. */
async function untilEmpty(once: () => void, empty: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    if (empty()) return;
    once();
    if (empty()) return;
    await sleep(Math.min(1 + attempt, 25));
  }
  if (!empty()) throw new Error(`processes in ${what} survived SIGKILL for 5 s`);
}

/** Polls a cgroupfs condition (a freeze takes microseconds to a few ms); throws after ~5 s. */
async function untilTrue(done: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 250; attempt++) {
    if (done()) return;
    await sleep(attempt < 20 ? 0 : Math.min(attempt, 25));
  }
  if (!done()) throw new Error(`${what} did not reach the wanted freezer state within 5 s`);
}

/* ---------------------------------------------------------------------------------------------------------------- */

const V1_BASE_CONTROLLERS = ['memory', 'cpu', 'pids', 'freezer'] as const;
type V1Controller = (typeof V1_BASE_CONTROLLERS)[number] | 'cpuacct';

/**
 * CPU accounting on v1 lives in the cpuacct controller: usually co-mounted with cpu (`cpu,cpuacct`, one directory),
 * sometimes a hierarchy of its own, which then needs a directory per cgroup too.
 */
function v1Controllers(mount: string): V1Controller[] {
  const cpuacct = path.join(mount, 'cpuacct');
  if (!fs.existsSync(path.join(cpuacct, 'cpuacct.usage'))) return [...V1_BASE_CONTROLLERS];
  try {
    if (fs.realpathSync(cpuacct) === fs.realpathSync(path.join(mount, 'cpu'))) return [...V1_BASE_CONTROLLERS];
  } catch {
    return [...V1_BASE_CONTROLLERS];
  }
  return [...V1_BASE_CONTROLLERS, 'cpuacct'];
}

class CgroupV1Driver implements CgroupDriver {
  readonly version = 1 as const;
  readonly ownerDirs: readonly string[];
  private parentsReady = false;
  private readonly controllers: V1Controller[];

  constructor(
    private readonly mount: string,
    private readonly parent: string,
    private readonly owner: string,
  ) {
    this.controllers = v1Controllers(mount);
    this.ownerDirs = this.controllers.map((c) => path.join(mount, c, parent, owner));
  }

  check(): string | null {
    for (const c of V1_BASE_CONTROLLERS) {
      const dir = path.join(this.mount, c);
      if (!fs.existsSync(path.join(dir, 'cgroup.procs'))) {
        return `cgroup v1 controller "${c}" is not mounted at ${dir} (mount it, or boot with cgroup v2)`;
      }
    }
    try {
      this.ensureParents();
    } catch (err) {
      return `cannot create ${this.ownerDirs.join(', ')}: ${(err as Error).message} (run the server as root)`;
    }
    return null;
  }

  create(name: string, limits?: CgroupLimits): Cgroup {
    assertSafeName('cgroup name', name);
    if (!this.parentsReady) this.ensureParents();
    const cg = this.open(name);
    const made: string[] = [];
    try {
      for (const dir of cg.dirs) {
        mkdirCgroup(dir, () => this.ensureParents());
        made.push(dir);
      }
      try {
        writeFile(path.join(this.dir('memory', name), 'memory.swappiness'), '0');
      } catch {
        // not settable on some kernels; memsw (applyLimits) is the real guard
      }
      writeFile(path.join(this.dir('cpu', name), 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
      if (limits) cg.applyLimits(limits);
      return cg;
    } catch (err) {
      for (const dir of made.reverse()) {
        try {
          fs.rmdirSync(dir);
        } catch {
          // best effort; the original error wins
        }
      }
      throw err;
    }
  }

  private applyLimits(name: string, limits: CgroupLimits): void {
    const mem = this.dir('memory', name);
    const limit = path.join(mem, 'memory.limit_in_bytes');
    const memsw = path.join(mem, 'memory.memsw.limit_in_bytes');
    const bytes = String(limits.memoryBytes);
    // No swap for sandboxes: memsw = memory (present when swap accounting is on). The kernel wants
    // limit <= memsw at every step, so the order depends on whether the limit goes down or up.
    if (fs.existsSync(memsw)) {
      try {
        writeFile(limit, bytes);
        writeFile(memsw, bytes);
      } catch {
        writeFile(memsw, bytes);
        writeFile(limit, bytes);
      }
    } else {
      writeFile(limit, bytes);
    }
    writeFile(path.join(this.dir('cpu', name), 'cpu.cfs_quota_us'), String(cpuQuotaUs(limits.cpus)));
    writeFile(path.join(this.dir('pids', name), 'pids.max'), String(limits.pidsMax));
  }

  open(name: string): Cgroup {
    assertSafeName('cgroup name', name);
    const dirs = this.controllers.map((c) => this.dir(c, name));
    const cpuacctDir = this.dir(this.controllers.includes('cpuacct') ? 'cpuacct' : 'cpu', name);
    const memoryDir = this.dir('memory', name);
    const freezer = this.dir('freezer', name);
    const procs = path.join(freezer, 'cgroup.procs');
    const pids = (): number[] => readPids(procs);
    const freezeState = path.join(freezer, 'freezer.state');
    const setFrozen = (frozen: boolean): void => {
      try {
        writeFile(freezeState, frozen ? 'FROZEN' : 'THAWED');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    };
    const kill = async (): Promise<void> => {
      await untilEmpty(
        () => {
          // Freeze so nothing forks between reading the list and the kills, kill everyone, thaw so SIGKILL lands.
          setFrozen(true);
          killPids(pids());
          setFrozen(false);
        },
        () => pids().length === 0,
        freezer,
      );
    };
    // Read per invocation of a warm sandbox: kept open (see CounterFiles), closed by remove().
    const counters = openUsageV1(cpuacctDir, memoryDir);
    let removed: Promise<void> | undefined;
    return {
      name,
      dirs,
      procsFiles: dirs.map((d) => path.join(d, 'cgroup.procs')),
      pids,
      oomKills: () => readKeyed(path.join(memoryDir, 'memory.oom_control'), 'oom_kill'),
      usage: () => counters.read(),
      applyLimits: (limits) => this.applyLimits(name, limits),
      kill,
      freeze: async (frozen) => {
        // v1 may stay FREEZING while tasks fork during the freeze; writing FROZEN again retries (kernel docs,
        // cgroup-v1/freezer-subsystem), so each poll writes the wanted state before reading it back.
        const wanted = frozen ? 'FROZEN' : 'THAWED';
        await untilTrue(() => {
          setFrozen(frozen);
          return readFile(freezeState).trim() === wanted;
        }, freezeState);
      },
      remove: () => {
        counters.close();
        return (removed ??= killAndRemove(dirs, kill));
      },
    };
  }

  list(): string[] {
    const names = new Set<string>();
    for (const dir of this.ownerDirs) {
      try {
        for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) names.add(e.name);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return [...names].filter((n) => SAFE_NAME.test(n)).sort();
  }

  removeOwnerDirs(): void {
    removeCgroupDir(this.freezerPin());
    for (const c of this.controllers) rmdirQuiet(path.join(this.mount, c, this.parent, this.owner), path.join(this.mount, c, this.parent));
    this.parentsReady = false;
  }

  private dir(controller: V1Controller, name: string): string {
    return path.join(this.mount, controller, this.parent, this.owner, name);
  }

  private ensureParents(): void {
    for (const dir of this.ownerDirs) fs.mkdirSync(dir, { recursive: true });
    this.pinFreezer();
    this.parentsReady = true;
  }

  /** The owner's always-frozen, always-empty cgroup (see pinFreezer); its name is not a SAFE_NAME, so never listed. */
  private freezerPin(): string {
    return path.join(this.mount, 'freezer', this.parent, this.owner, FREEZER_PIN);
  }

  /**
   * Keeps one empty cgroup of this owner frozen while the owner's directories exist. The v1 freezer turns a global
   * static key on when the first cgroup of the machine freezes and off when the last one thaws, and each turn rewrites
   * kernel text on every CPU (text_poke, with IPIs). Every execution's removal freezes, kills and thaws its cgroup, so
   * with nothing else frozen each one paid two of them: a fifth of the machine's CPU in a burst of 100 executions here
   * (perf, `echo` bursts). With one cgroup always frozen the key stays on and a freeze is an atomic increment. The
   * pin holds no process, so it freezes at once and costs nothing; removeOwnerDirs() removes it, and a server killed
   * before that finds it again at its next start (the same owner).
   */
  private pinFreezer(): void {
    const pin = this.freezerPin();
    try {
      fs.mkdirSync(pin, { recursive: true });
      writeFile(path.join(pin, 'freezer.state'), 'FROZEN');
    } catch {
      // An optimisation only: freezing works without it.
    }
  }
}

/** See CgroupV1Driver.pinFreezer. */
const FREEZER_PIN = '.freeze-pin';

function cpuQuotaUs(cpus: number): number {
  return Math.max(1000, Math.round(cpus * CPU_PERIOD_US));
}

/* ---------------------------------------------------------------------------------------------------------------- */

const V2_CONTROLLERS = ['memory', 'cpu', 'pids'] as const;

class CgroupV2Driver implements CgroupDriver {
  readonly version = 2 as const;
  readonly ownerDirs: readonly string[];
  private parentsReady = false;
  private enabled = new Set<string>();

  constructor(
    private readonly mount: string,
    private readonly parent: string,
    private readonly owner: string,
    private readonly allowMissing: boolean,
  ) {
    this.ownerDirs = [path.join(mount, parent, owner)];
  }

  check(): string | null {
    let available: string[];
    try {
      available = readFile(path.join(this.mount, 'cgroup.controllers')).trim().split(/\s+/).filter(Boolean);
    } catch {
      return `cgroup v2 is not mounted at ${this.mount}`;
    }
    const missing = V2_CONTROLLERS.filter((c) => !available.includes(c));
    if (missing.length > 0 && !this.allowMissing) {
      return `cgroup v2 at ${this.mount} lacks the ${missing.join(', ')} controller(s): enable them for the server's cgroup (systemd: Delegate=yes)`;
    }
    try {
      this.ensureParents();
    } catch (err) {
      return `cannot create ${this.ownerDirs[0]} with controllers enabled: ${(err as Error).message} (run as root, or delegate the cgroup)`;
    }
    return null;
  }

  create(name: string, limits?: CgroupLimits): Cgroup {
    assertSafeName('cgroup name', name);
    if (!this.parentsReady) this.ensureParents();
    const cg = this.open(name);
    const dir = cg.dirs[0]!;
    mkdirCgroup(dir, () => this.ensureParents());
    try {
      if (this.enabled.has('memory') && fs.existsSync(path.join(dir, 'memory.swap.max'))) {
        writeFile(path.join(dir, 'memory.swap.max'), '0');
      }
      if (limits) cg.applyLimits(limits);
      return cg;
    } catch (err) {
      try {
        fs.rmdirSync(dir);
      } catch {
        // best effort; the original error wins
      }
      throw err;
    }
  }

  private applyLimits(dir: string, limits: CgroupLimits): void {
    if (this.enabled.has('memory')) writeFile(path.join(dir, 'memory.max'), String(limits.memoryBytes));
    if (this.enabled.has('cpu')) writeFile(path.join(dir, 'cpu.max'), `${cpuQuotaUs(limits.cpus)} ${CPU_PERIOD_US}`);
    if (this.enabled.has('pids')) writeFile(path.join(dir, 'pids.max'), String(limits.pidsMax));
  }

  open(name: string): Cgroup {
    assertSafeName('cgroup name', name);
    const dir = path.join(this.mount, this.parent, this.owner, name);
    const procs = path.join(dir, 'cgroup.procs');
    const pids = (): number[] => readPids(procs);
    // cgroup.kill exists in every non-root cgroup since Linux 5.14.
    const hasKill = fs.existsSync(path.join(this.ownerDirs[0]!, 'cgroup.kill'));
    const populated = (): boolean => {
      try {
        return readKeyed(path.join(dir, 'cgroup.events'), 'populated') !== 0;
      } catch {
        return pids().length > 0;
      }
    };
    const kill = async (): Promise<void> => {
      await untilEmpty(
        () => {
          if (hasKill) {
            try {
              writeFile(path.join(dir, 'cgroup.kill'), '1');
              return;
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
            }
          }
          // Kernels before 5.14: freeze, kill everyone, thaw.
          const freeze = path.join(dir, 'cgroup.freeze');
          try {
            writeFile(freeze, '1');
          } catch {
            // no freezer: kill anyway, the loop repeats
          }
          killPids(pids());
          try {
            writeFile(freeze, '0');
          } catch {
            // ignore
          }
        },
        () => !fs.existsSync(dir) || !populated(),
        dir,
      );
    };
    // Read per invocation of a warm sandbox: kept open (see CounterFiles), closed by remove().
    const counters = openUsageV2(dir);
    let removed: Promise<void> | undefined;
    return {
      name,
      dirs: [dir],
      procsFiles: [procs],
      pids,
      oomKills: () => readKeyed(path.join(dir, 'memory.events'), 'oom_kill'),
      usage: () => counters.read(),
      applyLimits: (limits) => this.applyLimits(dir, limits),
      kill,
      freeze: async (frozen) => {
        writeFile(path.join(dir, 'cgroup.freeze'), frozen ? '1' : '0');
        await untilTrue(() => readKeyed(path.join(dir, 'cgroup.events'), 'frozen') === (frozen ? 1 : 0), dir);
      },
      remove: () => {
        counters.close();
        return (removed ??= killAndRemove([dir], kill));
      },
    };
  }

  list(): string[] {
    try {
      return fs
        .readdirSync(this.ownerDirs[0]!, { withFileTypes: true })
        .filter((e) => e.isDirectory() && SAFE_NAME.test(e.name))
        .map((e) => e.name)
        .sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  removeOwnerDirs(): void {
    rmdirQuiet(this.ownerDirs[0]!, path.join(this.mount, this.parent));
    this.parentsReady = false;
  }

  /** Creates `<mount>/<parent>/<owner>` and enables memory/cpu/pids for the children of each level. */
  private ensureParents(): void {
    const levels = [this.mount, path.join(this.mount, this.parent), path.join(this.mount, this.parent, this.owner)];
    let available = readFile(path.join(this.mount, 'cgroup.controllers')).trim().split(/\s+/).filter(Boolean);
    for (const dir of levels) {
      fs.mkdirSync(dir, { recursive: true });
      const wanted = V2_CONTROLLERS.filter((c) => available.includes(c));
      const control = path.join(dir, 'cgroup.subtree_control');
      const have = readFile(control).trim().split(/\s+/);
      const add = wanted.filter((c) => !have.includes(c));
      if (add.length > 0) writeFile(control, add.map((c) => `+${c}`).join(' '));
      available = readFile(control).trim().split(/\s+/).filter(Boolean);
    }
    this.enabled = new Set(available);
    this.parentsReady = true;
  }
}
