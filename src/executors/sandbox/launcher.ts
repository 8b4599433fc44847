/**
 * Launchers and the pool that keeps some ready. A launcher is one process image after another in the same pid:
 *   node --spawn--> /bin/sh (root: writes its pid into a fresh cgroup's cgroup.procs files, says "R" on fd 4)
 *        --exec--> prlimit (RLIMIT_CORE) [--exec--> nsenter --net (egress only)]
 *        --exec--> setpriv (drops to the sandbox uid/gid, no groups, no caps, no-new-privs, parent-death SIGKILL)
 *        --exec--> /bin/sh -s (unprivileged, reads one command line from fd 5)
 * An execution then sends it `exec bwrap ...` (see bwrap-args.ts).
 * Where native/kindling-launch is built (the default), one exec of it does all of the above (launchRecord instead of
 * launchLine): four execs of dynamically linked programs less per sandbox, a fifth of the machine's CPU in a burst of
 * creates. The shell chain stays for hosts without a C compiler. And the server does not fork itself for it either:
 * its launch service (launch-service.ts) asks one long-lived kindling-launch (the spawner) to fork the launcher, whose
 * streams connect back to the server over a unix socket.
 *
 * Why a pool: moving a process into a cgroup waits for an RCU grace period whenever no migration happened in the last
 * few ms (measured here: 0.05 ms back-to-back, 5-15 ms after 20 ms idle), which alone would double a cold start.
 * Launchers kept ready take that, the node fork and the execs off the request path; every execution still gets its own
 * fresh cgroup and a fresh sandbox, never a reused one. With the pool empty (or off) a launcher is spawned on demand.
 *
 * Descriptors the server inherited without close-on-exec are replaced by /dev/null in launchers, so nothing of the
 * server leaks into sandboxes; the environment is empty.
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import type { Readable } from 'node:stream';
import type { Cgroup, CgroupDriver } from '../shared/cgroups.js';
import type { Logger } from '../shared/logger.js';
import { processExited } from '../shared/process.js';
import { PrewarmPool, type PrewarmPoolStats } from '../shared/prewarm-pool.js';
import { SANDBOX_CORE_LIMIT } from '../shared/syscall-policy.js';
import { FD_STATUS } from './bwrap-args.js';
import { fromChildProcess, LAUNCH_SERVICE_UNAVAILABLE, LaunchService, launchSocketUsable, type ExitStatus, type LauncherProcess } from './launch-service.js';

/**
 * Run by /bin/sh as root: join every cgroup given, report readiness on the status fd, then become the unprivileged
 * shell that reads the command line from fd 5 (the caller's stdin kept on fd 6).
 */
const PREPARE = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; echo R >&4; exec "$@" 6<&0 0<&5 5<&-';
/** The launcher's exit status when a setup step failed (its cgroup; with the native helper also limits, netns, privileges). */
export const LAUNCHER_CGROUP_FAILED = 125;
const POOL_KEY = 'launcher';
/** dist/native/kindling-launch, built by scripts/build-native.sh (dist/src/executors/sandbox -> dist/native). */
export const DEFAULT_LAUNCH_HELPER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'kindling-launch');
const LAUNCHER_READY_TIMEOUT_MS = 10_000;

/** A prepared launcher: in its fresh cgroup, unprivileged, waiting for one command line on fd 5. */
export interface Launcher {
  readonly name: string;
  readonly cgroup: Cgroup;
  readonly process: LauncherProcess;
  /** Spawned as native/kindling-launch (its command is a launchRecord) rather than the shell chain (a launchLine). */
  readonly native: boolean;
  /** Everything bwrap (and the launcher's "R") wrote on the status fd so far. */
  readonly status: Buffer[];
  /** Resolves when the launcher has joined its cgroup; rejects when it died first. */
  readonly ready: Promise<void>;
  /** The process ended (rejects when it could not be spawned). */
  readonly exited: Promise<ExitStatus>;
  /** The process ended and all of its pipes closed (node's 'close'). */
  readonly closed: Promise<void>;
}

export interface LauncherOptions {
  shPath: string;
  setprivPath: string;
  prlimitPath: string;
  nsenterPath: string;
  /** native/kindling-launch; null (or a path that does not exist): the shell chain. */
  launchHelperPath: string | null;
  /**
   * Where the server listens for the native launchers' streams (see launch-service.ts); null, or a path too long for
   * a unix socket: launchers are spawned from the server's process instead.
   */
  launchSocketPath: string | null;
  /** Makes the launch socket's directory (see LaunchServiceOptions.prepareDir). */
  prepareLaunchSocketDir: () => Promise<void>;
  uid: number;
  gid: number;
  /** The cgroup driver (throws when cgroups cannot be used here). */
  cgroups: () => CgroupDriver;
  /** Names of cgroups the executor owns right now: a launcher's is added on spawn (the executor removes it). */
  reserved: Set<string>;
  /** Launchers kept ready; 0 turns the pool off (every launcher is spawned on demand). */
  prewarm: number;
  idleTtlMs: number;
  /** Removes a launcher's cgroup and forgets it (the executor's bookkeeping). */
  release: (launcher: Launcher) => Promise<void>;
  log: Logger;
}

export class Launchers {
  private readonly pool: PrewarmPool<Launcher> | null;
  private leakedFds: number[] = [];
  private devNull = -1;
  private closing = false;
  private nativeHelper: string | null;
  /** Forks native launchers outside the server's process (null: they are spawned from it). */
  private service: LaunchService | null;
  /** The service made at construction, closed at the end even if it was given up on. */
  private readonly ownedService: LaunchService | null;

  constructor(private readonly options: LauncherOptions) {
    this.nativeHelper = options.launchHelperPath !== null && fs.existsSync(options.launchHelperPath) ? options.launchHelperPath : null;
    this.service =
      this.nativeHelper !== null && options.launchSocketPath !== null && launchSocketUsable(options.launchSocketPath)
        ? new LaunchService({
            helperPath: this.nativeHelper,
            socketPath: options.launchSocketPath,
            prepareDir: options.prepareLaunchSocketDir,
            log: options.log,
          })
        : null;
    this.ownedService = this.service;
    this.pool =
      options.prewarm > 0
        ? new PrewarmPool<Launcher>({
            create: () => this.prepare(),
            destroy: (l) => this.discard(l),
            // A launcher killed while it waited may not be reaped yet (no exit event): its /proc state says so.
            isAlive: (l) => l.process.exitStatus === null && !processExited(l.process.pid),
            sizePerKey: options.prewarm,
            maxItems: options.prewarm,
            idleTtlMs: options.idleTtlMs,
            onError: (err) => options.log.warn({ err }, 'could not prepare a sandbox launcher'),
          })
        : null;
    this.scanLeakedFds();
  }

  /** A ready launcher from the pool, or null (pool off or empty: the caller spawns one). */
  take(): Launcher | null {
    return this.pool?.take(POOL_KEY) ?? null;
  }

  /** Starts preparing launchers up to the pool's size. */
  replenish(): void {
    this.pool?.replenish(POOL_KEY);
  }

  stats(): PrewarmPoolStats | null {
    return this.pool?.stats() ?? null;
  }

  /** Stops preparing and discards the idle launchers (the launch service stays for running ones: closeService). */
  async close(): Promise<void> {
    this.closing = true;
    await this.pool?.close();
  }

  /** Stops the launch service: call once no execution runs (its launchers would be killed). */
  async closeService(): Promise<void> {
    await this.ownedService?.close();
  }

  /** Spawns a launcher; it joins its cgroup on its own (readiness: `ready`). */
  async spawn(netnsPath?: string): Promise<Launcher> {
    const o = this.options;
    const driver = o.cgroups();
    const name = `sbx-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
    const cgroup = driver.create(name);
    o.reserved.add(name);
    let proc: LauncherProcess;
    let native: boolean;
    try {
      const args = [String(o.uid), String(o.gid), String(SANDBOX_CORE_LIMIT), netnsPath ?? '-', ...cgroup.procsFiles];
      proc = this.service !== null ? await this.spawnServed(args, cgroup.procsFiles, netnsPath) : this.spawnHere(args, cgroup.procsFiles, netnsPath);
      // After the spawn: a fallback to the shell chain (its command is a launchLine) happens inside it.
      native = this.nativeHelper !== null;
    } catch (err) {
      o.reserved.delete(name);
      void cgroup.remove().catch(() => {});
      throw err;
    }
    const status: Buffer[] = [];
    const statusPipe = proc.stdio[FD_STATUS] as Readable;
    statusPipe.on('error', () => {});
    const ready = new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer): void => {
        status.push(chunk);
        if (chunk.includes(0x52 /* R */)) resolve();
      };
      statusPipe.on('data', onData);
      proc.exited.then(
        ({ code, sig }) => reject(new Error(`sandbox launcher exited (${code ?? sig}) before it was ready`)),
        reject,
      );
    });
    ready.catch(() => {});
    return { name, cgroup, process: proc, native, status, ready, exited: proc.exited, closed: proc.closed };
  }

  /** Through the launch service; from the server's own process once the service's helper proved unable to run. */
  private async spawnServed(args: string[], procsFiles: readonly string[], netnsPath: string | undefined): Promise<LauncherProcess> {
    try {
      return await this.service!.spawn(args);
    } catch (err) {
      if ((err as { code?: unknown }).code !== LAUNCH_SERVICE_UNAVAILABLE) throw err;
      // The helper exists but cannot be executed here (mode, a noexec mount): the shell chain from now on.
      this.nativeHelper = null;
      this.service = null;
      return this.spawnHere(args, procsFiles, netnsPath);
    }
  }

  /** A launcher spawned from the server's own process (no launch service here). */
  private spawnHere(args: string[], procsFiles: readonly string[], netnsPath: string | undefined): LauncherProcess {
    // fd 6 is where PREPARE keeps the caller's stdin; FD_ARGS (7) carries bwrap's arguments.
    const stdio: StdioOptions = ['pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'ignore', 'pipe'];
    for (const fd of this.leakedFds) {
      while (stdio.length < fd) stdio.push('ignore');
      if (stdio.length === fd) stdio.push(this.devNullFd());
    }
    // detached: a terminal's Ctrl-C (SIGINT to the server's process group) must not kill sandboxes that a graceful
    // shutdown wants to drain. cwd '/': the server's working directory must not show through /proc/1 of the
    // sandbox (PWD, cwd link).
    const spawnOptions = { stdio, env: {}, detached: true, cwd: '/' };
    const child =
      this.nativeHelper !== null
        ? spawn(this.nativeHelper, args, spawnOptions)
        : spawn(this.options.shPath, this.shellChain(procsFiles, netnsPath), spawnOptions);
    child.on('error', () => {}); // reported through `ready` / the execution's wait()
    return fromChildProcess(child);
  }

  /** The arguments of /bin/sh running PREPARE: the launcher without the native helper. */
  private shellChain(procsFiles: readonly string[], netnsPath: string | undefined): string[] {
    const o = this.options;
    return [
      '-c',
      PREPARE,
      'kindling-launch',
      String(procsFiles.length),
      ...procsFiles,
      // RLIMIT_CORE for the whole tree, soft and hard (the seccomp filter stops any change inside the sandbox).
      o.prlimitPath,
      `--core=${SANDBOX_CORE_LIMIT}:${SANDBOX_CORE_LIMIT}`,
      '--',
      // As root, before privileges are dropped: join the execution's network namespace (egress only).
      ...(netnsPath === undefined ? [] : [o.nsenterPath, `--net=${netnsPath}`]),
      o.setprivPath,
      `--reuid=${o.uid}`,
      `--regid=${o.gid}`,
      '--clear-groups',
      '--no-new-privs',
      '--inh-caps=-all',
      '--bounding-set=-all',
      '--pdeathsig=KILL',
      o.shPath,
      '-s',
    ];
  }

  /** Kills a launcher that will not be used and releases its cgroup. */
  async discard(launcher: Launcher): Promise<void> {
    try {
      launcher.process.kill('SIGKILL');
    } catch {
      // gone
    }
    for (const s of launcher.process.stdio) s?.destroy();
    await this.options.release(launcher);
  }

  /**
   * Descriptors this process inherited without close-on-exec (e.g. from a supervisor) would pass into every sandbox:
   * remember them so the launcher gets /dev/null there instead. Node and libuv open everything close-on-exec, so the
   * set is fixed at start-up; the executor re-reads it when it refreshes its images.
   */
  scanLeakedFds(): void {
    const leaked: number[] = [];
    try {
      for (const name of fs.readdirSync('/proc/self/fd')) {
        const fd = Number(name);
        if (!(fd > 2)) continue;
        try {
          const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
          const flags = /^flags:\s*([0-7]+)/m.exec(info);
          if (flags !== null && (parseInt(flags[1]!, 8) & 0o2000000) === 0) leaked.push(fd);
        } catch {
          // closed meanwhile (readdir's own fd)
        }
      }
    } catch {
      // no /proc: nothing we can do here; probe() reports the platform
    }
    this.leakedFds = leaked.filter((fd) => fd !== this.devNull && fd < 4096).sort((a, b) => a - b);
  }

  /** Closes the /dev/null descriptor kept for leaked fds (once nothing is spawned any more). */
  closeDevNull(): void {
    if (this.devNull >= 0) {
      fs.closeSync(this.devNull);
      this.devNull = -1;
    }
  }

  /** For the pool: a launcher that has joined its cgroup (so no RCU wait is left on the request path). */
  private async prepare(): Promise<Launcher> {
    // Let the execution that triggered the refill get going first.
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (this.closing) throw new Error('shutting down');
    const launcher = await this.spawn();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        launcher.ready,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('sandbox launcher not ready in time')), LAUNCHER_READY_TIMEOUT_MS);
        }),
      ]);
      return launcher;
    } catch (err) {
      await this.discard(launcher);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private devNullFd(): number {
    if (this.devNull < 0) this.devNull = fs.openSync('/dev/null', 'r+');
    return this.devNull;
  }
}
