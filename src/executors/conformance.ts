// Over 400 lines: the one suite every executor runs; its cases read best together.
/**
 * The executor conformance suite: one set of behaviours every executor must show, run against the real technology
 * (Docker engine, bubblewrap, QEMU). Each executor's `conformance.test.ts` calls `runConformanceSuite`.
 *
 * Covered: one-shot executions (output, exit codes, stdin, env, files, isolation, limits, kill, parallelism, usage,
 * reaping), warm sandboxes with a resident agent where the executor offers them (invoke, a timeout as a result,
 * destroy releasing everything), persistent sandboxes where the executor offers them (processes and files persist
 * between commands, a kill ends one command's tree only, pause/resume as its capabilities say, destroy and reaping
 * after a crash leave nothing; with `sandboxStorage`: files on a disk that outlives the sandbox, diskMb as ENOSPC,
 * snapshots and sandboxes made from them, storage reaping; with `connectPort`: a port on the sandbox's loopback), and
 * the executor's own end: close() drains, destroy() aborts, both idempotent.
 */
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { newExecutionId } from '../core/ids.js';
import type { ResourceLimits, RunSpec } from '../core/types.js';
import { agentLaunch } from '../../agent/files.js';
import { isKindlingError } from '../core/errors.js';
import type { Execution, Executor, ExitInfo, PersistentSandbox, SandboxCommand, SandboxStorageOps } from './executor.js';
import { skipOrFail } from './test-support.js';

export interface CompletedRun extends ExitInfo {
  stdout: Buffer;
  stderr: Buffer;
  wallMs: number;
}

const DEFAULT_LIMITS: ResourceLimits = { timeoutMs: 30_000, memoryMb: 256, cpus: 1, pids: 128, outputBytes: 10 << 20, diskMb: 64, openFiles: 1024 };

export function testSpec(overrides: Partial<RunSpec> & { command: string[] }, image = 'kindling/base'): RunSpec {
  return {
    id: newExecutionId(),
    image,
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8' },
    workdir: '/work',
    network: 'none',
    stdin: false,
    files: [],
    labels: {},
    ...overrides,
    limits: { ...DEFAULT_LIMITS, ...overrides.limits },
  };
}

/**
 * Runs a spec to the end, collecting output. `killOnOutput`: kill() once the process has written its first stdout
 * bytes (it is running then, whatever the machine's load). `killAfterMs`: a backstop kill for a run that would not end.
 */
export async function runToCompletion(
  executor: Executor,
  spec: RunSpec,
  options: { stdin?: Buffer; killAfterMs?: number; killOnOutput?: boolean } = {},
): Promise<CompletedRun & { killedAtMs: number | null }> {
  const startedAt = performance.now();
  const execution = await executor.start({ ...spec, stdin: spec.stdin || options.stdin !== undefined });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  let killedAtMs: number | null = null;
  const kill = (): void => {
    killedAtMs ??= performance.now();
    execution.kill();
  };
  execution.stdout.on('data', (chunk: Buffer) => {
    if (options.killOnOutput && stdout.length === 0) kill();
    stdout.push(chunk);
  });
  execution.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
  if (execution.stdin) {
    execution.stdin.on('error', () => undefined);
    execution.stdin.end(options.stdin);
  }
  const timer = options.killAfterMs === undefined ? null : setTimeout(kill, options.killAfterMs);
  try {
    const exit = await execution.wait();
    const endedAt = performance.now();
    await execution.disposed;
    return {
      ...exit,
      stdout: Buffer.concat(stdout),
      stderr: Buffer.concat(stderr),
      wallMs: endedAt - startedAt,
      killedAtMs: killedAtMs === null ? null : endedAt - killedAtMs,
    };
  } finally {
    if (timer) clearTimeout(timer);
  }
}

export interface ConformanceTarget {
  executor: Executor;
  /** Images the suite may use (base is required; python enables a few more cases). */
  images: { base: string; python?: string };
  /**
   * How many executions the parallel case runs at once (default 20). An executor whose start-up is too heavy for 20 at
   * once on this machine (microVMs under TCG) passes a smaller count; the case title says which count ran.
   */
  parallel?: { count: number };
  /**
   * Cases this executor's technology cannot pass, each with the reason: the case is reported skipped with it, never
   * passed. `pidsLimit`: the sandbox's process count cannot be capped at `limits.pids`.
   */
  cannot?: { pidsLimit?: string };
  /**
   * Makes another executor configured like `executor` but owned by `ownerId` (nothing prewarmed, images read). The close/destroy
   * cases end it; an executor made again with the same owner then reaps, to show that nothing was left behind.
   */
  create: (ownerId: string) => Promise<Executor>;
}

/** Starts a spec and collects its output as it comes; `done` settles with the exit (or the platform error). */
async function startCollecting(executor: Executor, spec: RunSpec): Promise<{ execution: Execution; stdout: () => string; done: Promise<ExitInfo> }> {
  const execution = await executor.start(spec);
  const chunks: Buffer[] = [];
  execution.stdout.on('data', (chunk: Buffer) => chunks.push(chunk));
  execution.stderr.resume();
  const done = execution.wait();
  done.catch(() => {});
  return { execution, stdout: () => Buffer.concat(chunks).toString(), done };
}

/** `promise`, or a rejection saying what did not happen within `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once `condition` holds, checking it every few milliseconds (callers bound it with `within`). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 20));
}

/** A python handler for the warm sandbox cases: echoes with a prefix, prints a log line, sleeps when asked. */
const WARM_HANDLER = ['import time', 'def handler(body):', '    print("log:", body.decode())', '    if body == b"sleep":', '        time.sleep(60)', '    return b"hi " + body', ''].join('\n');

/**
 * Registers the suite. `setUp` returns the executor, or a string saying what is missing, which skips every case with
 * that message (never a silent pass).
 */
export function runConformanceSuite(name: string, setUp: () => Promise<ConformanceTarget | string>): void {
  /** Owner ids are cgroup and container label names: short and safe. */
  const ownerPrefix = (t: ConformanceTarget): string => `conf-${t.executor.name}`;
  /** An executor of the same owner finds nothing to reap: what `owner` made is gone. */
  const assertNothingLeft = async (t: ConformanceTarget, owner: string): Promise<void> => {
    const reaper = await t.create(owner);
    try {
      assert.equal((await reaper.reap()).removed, 0, `resources of ${owner} were left behind`);
    } finally {
      await reaper.destroy();
    }
  };
  describe(`executor conformance: ${name}`, () => {
    let target: ConformanceTarget | null = null;
    let skipReason = '';

    before(async () => {
      const result = await setUp();
      if (typeof result === 'string') skipReason = skipOrFail(name, result);
      else target = result;
    });
    after(async () => {
      await target?.executor.close();
    });

    /** A case; `skip` reports it skipped with a reason (a case that cannot apply never passes silently). */
    const test = (title: string, body: (target: ConformanceTarget, skip: (reason: string) => void) => Promise<void>): void => {
      it(title, async (t) => {
        if (!target) {
          t.skip(`${name}: ${skipReason}`);
          return;
        }
        await body(target, (reason) => t.skip(`${name}: ${reason}`));
      });
    };
    const base = (t: ConformanceTarget, spec: Partial<RunSpec> & { command: string[] }): RunSpec => testSpec(spec, t.images.base);

    test('runs a command and reports stdout and exit code 0', async (t) => {
      const run = await runToCompletion(t.executor, base(t, { command: ['echo', 'hello world'] }));
      assert.equal(run.exitCode, 0);
      assert.equal(run.stdout.toString(), 'hello world\n');
      assert.equal(run.stderr.length, 0);
      assert.equal(run.oomKilled, false);
    });

    test('keeps stderr apart and passes the real non-zero exit code', async (t) => {
      const run = await runToCompletion(t.executor, base(t, { command: ['sh', '-c', 'echo out; echo err >&2; exit 42'] }));
      assert.equal(run.exitCode, 42);
      assert.equal(run.stdout.toString(), 'out\n');
      assert.equal(run.stderr.toString(), 'err\n');
    });

    test('a missing command is exit 127 with a message on stderr, not a platform error', async (t) => {
      const run = await runToCompletion(t.executor, base(t, { command: ['no-such-binary-here'] }));
      assert.equal(run.exitCode, 127);
      assert.match(run.stderr.toString(), /not found|No such file or directory/);
    });

    test('round-trips 1 MiB of random bytes through stdin byte-exact', async (t) => {
      const input = randomBytes(1 << 20);
      const run = await runToCompletion(t.executor, base(t, { command: ['cat'] }), { stdin: input });
      assert.equal(run.exitCode, 0);
      assert.equal(run.stdout.length, input.length);
      assert.equal(createHash('sha256').update(run.stdout).digest('hex'), createHash('sha256').update(input).digest('hex'));
    });

    test('empty stdin and no stdin both read end-of-file at once', async (t) => {
      const empty = await runToCompletion(t.executor, base(t, { command: ['wc', '-c'] }), { stdin: Buffer.alloc(0) });
      assert.equal(empty.stdout.toString().trim(), '0');
      const none = await runToCompletion(t.executor, base(t, { command: ['wc', '-c'] }));
      assert.equal(none.stdout.toString().trim(), '0');
    });

    test('gives exactly the requested environment, nothing of the server', async (t) => {
      const run = await runToCompletion(t.executor, base(t, { command: ['env'], env: { PATH: '/usr/bin:/bin', GREETING: "it's 'quoted' $HOME" } }));
      const lines = run.stdout.toString().trim().split('\n').sort();
      assert.ok(lines.includes(`GREETING=it's 'quoted' $HOME`), run.stdout.toString());
      for (const line of lines) {
        const key = line.split('=')[0] ?? '';
        assert.ok(['PATH', 'GREETING', 'HOSTNAME', 'PWD', 'SHLVL', '_', 'container'].includes(key), `unexpected env ${line}`);
      }
    });

    test('starts in the requested working directory, which is writable', async (t) => {
      const run = await runToCompletion(t.executor, base(t, { command: ['sh', '-c', 'pwd; echo data > f && cat f'], workdir: '/work' }));
      assert.equal(run.exitCode, 0, run.stderr.toString());
      assert.equal(run.stdout.toString(), '/work\ndata\n');
    });

    test('places input files read-only under /.kindling', async (t) => {
      const run = await runToCompletion(
        t.executor,
        base(t, { command: ['sh', '-c', 'cat /.kindling/hello.txt; echo x > /.kindling/hello.txt && echo WROTE'], files: [{ name: 'hello.txt', content: 'from a file\n' }] }),
      );
      assert.equal(run.stdout.toString(), 'from a file\n');
    });

    test('runs as an unprivileged user on a read-only root with no network but loopback', async (t) => {
      const run = await runToCompletion(
        t.executor,
        base(t, { command: ['sh', '-c', 'id -u; touch /usr/owned 2>/dev/null && echo ROOT-WRITABLE; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " "'] }),
      );
      const [uid, ...interfaces] = run.stdout.toString().trim().split('\n');
      assert.notEqual(uid, '0');
      assert.ok(!run.stdout.toString().includes('ROOT-WRITABLE'));
      assert.deepEqual(interfaces.filter((name) => name !== 'lo'), []);
    });

    test('kill() ends the whole process tree promptly', async (t) => {
      // Killed once the tree exists (the background sleep was forked before `started`), not after a guessed delay.
      const run = await runToCompletion(t.executor, base(t, { command: ['sh', '-c', 'sleep 100 & echo started; sleep 100; echo never'] }), { killOnOutput: true });
      assert.notEqual(run.exitCode, 0);
      assert.equal(run.signal, 'SIGKILL');
      assert.equal(run.stdout.toString(), 'started\n');
      // From the kill to the exit; the sleeps would take 100 s.
      assert.ok(run.killedAtMs !== null && run.killedAtMs < 30_000, `ended ${run.killedAtMs} ms after kill()`);
    });

    test('a memory bomb is OOM-killed and reported', async (t) => {
      const script = t.images.python
        ? { image: t.images.python, command: ['python3', '-c', 'x = bytearray(512 * 1024 * 1024)'] }
        : { image: t.images.base, command: ['sh', '-c', 'x=a; while true; do x=$x$x; done'] };
      // The kill is a backstop for a bomb that is never stopped (then oomKilled is false and this fails), not a margin.
      const run = await runToCompletion(t.executor, testSpec({ command: script.command, limits: { ...DEFAULT_LIMITS, memoryMb: 64 } }, script.image), { killAfterMs: 180_000 });
      assert.equal(run.oomKilled, true, `exit ${run.exitCode} ${run.stderr.toString()}`);
    });

    test('the pids limit holds against a fork bomb', async (t, skip) => {
      if (t.cannot?.pidsLimit !== undefined) return skip(t.cannot.pidsLimit);
      // Counted with the shell's own glob: `ls` may fail where /proc is not the host kernel's (and count 0).
      const run = await runToCompletion(
        t.executor,
        base(t, { command: ['sh', '-c', 'n=0; while [ $n -lt 200 ]; do sleep 5 & n=$((n+1)); done 2>/dev/null; echo started; set -- /proc/[0-9]*; echo $#'], limits: { ...DEFAULT_LIMITS, pids: 32 } }),
        { killAfterMs: 15_000 },
      );
      const processes = Number(run.stdout.toString().trim().split('\n').pop());
      assert.ok(processes <= 32, `saw ${processes} processes with pids=32`);
      const next = await runToCompletion(t.executor, base(t, { command: ['echo', 'still fine'] }));
      assert.equal(next.stdout.toString(), 'still fine\n');
    });

    test('runs executions in parallel (20 unless the executor sets a smaller count)', async (t) => {
      const { count } = t.parallel ?? { count: 20 };
      // A barrier instead of a stopwatch: each execution says `ready` and then waits for a line of stdin, which is sent
      // only once all of them are ready. Executions run one after another never all get there (the backstop fails it).
      type Running = { execution: Awaited<ReturnType<Executor['start']>>; chunks: Buffer[] };
      const running: Running[] = [];
      const startAndWaitReady = async (): Promise<Running> => {
        const execution = await t.executor.start(base(t, { command: ['sh', '-c', 'echo ready; read line; echo "$line"'], stdin: true }));
        const entry = { execution, chunks: [] as Buffer[] };
        running.push(entry);
        execution.stderr.resume();
        await new Promise<void>((resolve) =>
          execution.stdout.on('data', (chunk: Buffer) => {
            entry.chunks.push(chunk);
            if (Buffer.concat(entry.chunks).toString().startsWith('ready\n')) resolve();
          }),
        );
        return entry;
      };
      let backstop: NodeJS.Timeout | undefined;
      let all: Running[];
      try {
        all = await Promise.race([
          Promise.all(Array.from({ length: count }, startAndWaitReady)),
          new Promise<never>((_, reject) => {
            backstop = setTimeout(() => reject(new Error(`the ${count} executions were never all running at once (${running.length} started)`)), 600_000);
          }),
        ]);
      } catch (error) {
        for (const { execution } of running) execution.kill();
        throw error;
      } finally {
        clearTimeout(backstop);
      }
      all.forEach(({ execution }, index) => execution.stdin!.end(`${index}\n`));
      for (const [index, { execution, chunks }] of all.entries()) {
        const exit = await execution.wait();
        await execution.disposed;
        assert.equal(exit.exitCode, 0, `execution ${index}`);
        assert.equal(Buffer.concat(chunks).toString(), `ready\n${index}\n`);
      }
    });

    test("reports the kernel's accounting: CPU time and peak memory of a known CPU burn", async (t) => {
      if (!t.images.python) return;
      const burn = 'import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.5:\n    pass\nblob = bytearray(32 * 1024 * 1024)\n';
      const run = await runToCompletion(t.executor, testSpec({ command: ['python3', '-c', burn] }, t.images.python));
      assert.equal(run.exitCode, 0, run.stderr.toString());
      assert.ok(run.usage, 'no usage reported');
      const cpuMs = run.usage.cpuMs;
      // At least the burn (the same kernel counts both); the upper bound catches a unit error (microseconds taken for
      // milliseconds is 1000x), not this machine's speed: under TCG on a loaded host python's own start costs seconds.
      assert.ok(cpuMs !== null && cpuMs >= 400 && cpuMs < 50_000, `cpuMs ${cpuMs} for a 500 ms burn`);
      const peak = run.usage.memoryPeakBytes;
      assert.ok(peak !== null && peak >= 32 * 1024 * 1024, `memoryPeakBytes ${peak} after a 32 MiB allocation`);
    });

    test('caps open files (limits.openFiles): opening files ends in EMFILE at the limit, and the limit cannot be raised', async (t) => {
      const program = [
        'import errno, os, resource',
        'fds = []',
        'try:',
        '    while len(fds) < 100000: fds.append(os.open("/dev/null", os.O_RDONLY))',
        '    print("no-emfile")',
        'except OSError as e:',
        '    print("emfile" if e.errno == errno.EMFILE else f"errno-{e.errno}", max(fds))',
        'print(*resource.getrlimit(resource.RLIMIT_NOFILE))',
        'try:',
        '    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))',
        '    print("raised")',
        'except (ValueError, OSError):',
        '    print("refused")',
      ].join('\n');
      // Without python, the shell's ulimit reports the limit (no EMFILE loop possible in POSIX sh).
      const run = t.images.python
        ? await runToCompletion(t.executor, testSpec({ command: ['python3', '-c', program], limits: { ...DEFAULT_LIMITS, openFiles: 64 } }, t.images.python))
        : await runToCompletion(t.executor, base(t, { command: ['sh', '-c', 'ulimit -n; ulimit -Hn'], limits: { ...DEFAULT_LIMITS, openFiles: 64 } }));
      assert.equal(run.exitCode, 0, run.stderr.toString());
      const lines = run.stdout.toString().trim().split('\n');
      if (t.images.python) {
        // The highest descriptor a process with RLIMIT_NOFILE 64 can hold is 63.
        assert.deepEqual(lines, ['emfile 63', '64 64', 'refused']);
      } else {
        assert.deepEqual(lines, ['64', '64']);
      }
      // The default is 1024 (soft and hard), whatever the engine's own default is.
      const defaults = await runToCompletion(t.executor, base(t, { command: ['sh', '-c', 'ulimit -n; ulimit -Hn'] }));
      assert.deepEqual(defaults.stdout.toString().trim().split('\n'), ['1024', '1024']);
    });

    test('leaves nothing behind: reap finds no orphans after runs complete', async (t) => {
      await runToCompletion(t.executor, base(t, { command: ['true'] }));
      const report = await t.executor.reap();
      assert.equal(report.removed, 0);
    });

    /* ---- warm sandboxes (resident agent), where the executor offers them ------------------------------------------ */

    const warmTest = (title: string, body: (target: ConformanceTarget, create: NonNullable<Executor['createWarmSandbox']>) => Promise<void>): void => {
      test(title, async (t, skip) => {
        const create = t.executor.createWarmSandbox?.bind(t.executor);
        if (create === undefined) return skip(`${t.executor.name} offers no warm sandboxes (no createWarmSandbox), so it cannot run handler functions`);
        if (!t.images.python) return skip('the warm sandbox cases need the python image');
        await body(t, create);
      });
    };
    const warmSpec = (t: ConformanceTarget): RunSpec => {
      const launch = agentLaunch('python', WARM_HANDLER, 'handler');
      return testSpec({ command: launch.command, files: launch.files, workdir: '/tmp', limits: { ...DEFAULT_LIMITS, timeoutMs: 300_000 } }, t.images.python);
    };

    warmTest('a warm sandbox serves invocations through its resident agent, one after another', async (t, create) => {
      const sandbox = await create(warmSpec(t));
      try {
        assert.equal(sandbox.alive, true);
        assert.ok(sandbox.startMs > 0);
        for (const word of ['a', 'b']) {
          const result = await sandbox.invoke(Buffer.from(word), { timeoutMs: 10_000, outputBytes: 1 << 20 });
          assert.equal(result.exitCode, 0, result.body.toString());
          assert.equal(result.body.toString(), `hi ${word}`);
          assert.equal(result.logs.toString(), `log: ${word}\n`);
          assert.equal(result.timedOut, false);
        }
      } finally {
        await sandbox.destroy();
      }
    });

    warmTest('an invocation past its timeout is a result (timedOut, exit 137), and the sandbox is gone afterwards', async (t, create) => {
      const sandbox = await create(warmSpec(t));
      try {
        const startedAt = performance.now();
        const result = await sandbox.invoke(Buffer.from('sleep'), { timeoutMs: 500, outputBytes: 1 << 20 });
        assert.equal(result.timedOut, true);
        assert.equal(result.exitCode, 137);
        assert.ok(performance.now() - startedAt < 15_000, 'the timeout ended the call promptly');
        await within(sandbox.disposed, 15_000, 'the timed-out sandbox released');
        assert.equal(sandbox.alive, false);
      } finally {
        await sandbox.destroy();
      }
    });

    warmTest('destroy() releases everything the warm sandbox held, and may be called again', async (t, create) => {
      const sandbox = await create(warmSpec(t));
      await Promise.all([sandbox.destroy(), sandbox.destroy()]);
      await sandbox.destroy();
      await within(sandbox.disposed, 15_000, 'disposed after destroy()');
      assert.equal(sandbox.alive, false);
      // Nothing of it is left for a reaper to find (its cgroup or container, its agent dir).
      assert.equal((await t.executor.reap()).removed, 0);
    });

    /* ---- persistent sandboxes, where the executor offers them ------------------------------------------------------ */

    const sandboxTest = (
      title: string,
      body: (target: ConformanceTarget, create: NonNullable<Executor['createPersistentSandbox']>, skip: (reason: string) => void) => Promise<void>,
    ): void => {
      test(`persistent sandbox: ${title}`, async (t, skip) => {
        const create = t.executor.createPersistentSandbox?.bind(t.executor);
        if (create === undefined) return skip(`${t.executor.name} offers no persistent sandboxes (no createPersistentSandbox): the API answers SANDBOXES_UNSUPPORTED`);
        await body(t, create, skip);
      });
    };
    const sandboxSpec = (t: ConformanceTarget): RunSpec => base(t, { command: [], workdir: '/work', limits: { ...DEFAULT_LIMITS, timeoutMs: 300_000 } });
    /** Runs a command in a persistent sandbox to its end; `onFirstOutput` is called once with the command, at its first stdout bytes. */
    const runIn = async (
      sandbox: PersistentSandbox,
      command: string[],
      options: { stdin?: string; env?: Record<string, string>; workdir?: string; onFirstOutput?: (running: SandboxCommand) => void } = {},
    ): Promise<{ exitCode: number; signal: string | null; stdout: string; stderr: string }> => {
      const running = await sandbox.exec({ command, env: options.env ?? {}, workdir: options.workdir ?? '/work', stdin: options.stdin !== undefined });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      running.stdout.on('data', (chunk: Buffer) => {
        if (out.length === 0) options.onFirstOutput?.(running);
        out.push(chunk);
      });
      running.stderr.on('data', (chunk: Buffer) => err.push(chunk));
      running.stdin?.end(options.stdin);
      const exit = await within(running.wait(), 60_000, `the command ${JSON.stringify(command)} ended`);
      return { ...exit, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
    };
    /** The command lines of every process the sandbox can see (its own pid namespace). */
    const processList = async (sandbox: PersistentSandbox): Promise<string> =>
      (await runIn(sandbox, ['sh', '-c', `for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done`])).stdout;

    sandboxTest('reports its capabilities (pause, memory snapshot) as booleans', async (t, create) => {
      const sandbox = await create(sandboxSpec(t));
      try {
        assert.equal(typeof sandbox.capabilities.pause, 'boolean');
        assert.equal(typeof sandbox.capabilities.memorySnapshot, 'boolean');
        assert.equal(sandbox.alive, true);
      } finally {
        await sandbox.destroy();
      }
    });

    sandboxTest('processes and files persist across commands; exit codes, stderr, stdin, env and workdir are per command', async (t, create) => {
      const sandbox = await create(sandboxSpec(t));
      try {
        const started = await runIn(sandbox, ['sh', '-c', 'sleep 600 >/dev/null 2>&1 & echo $!']);
        assert.equal(started.exitCode, 0, started.stderr);
        const pid = started.stdout.trim();
        assert.match(pid, /^\d+$/);
        const seen = await runIn(sandbox, ['sh', '-c', `tr '\\0' ' ' < /proc/${pid}/cmdline`]);
        assert.equal(seen.stdout.trim(), 'sleep 600', 'the background process of the first command lives in the second');
        assert.equal((await runIn(sandbox, ['sh', '-c', 'echo "$GREETING" > note.txt'], { env: { GREETING: 'hello there' } })).exitCode, 0);
        assert.equal((await runIn(sandbox, ['cat', '/work/note.txt'])).stdout, 'hello there\n');
        assert.equal((await runIn(sandbox, ['sh', '-c', 'cat > /tmp/in; wc -c < /tmp/in'], { stdin: 'abc' })).stdout.trim(), '3');
        assert.equal((await runIn(sandbox, ['pwd'], { workdir: '/tmp' })).stdout, '/tmp\n');
        const failed = await runIn(sandbox, ['sh', '-c', 'echo out; echo oops >&2; exit 7']);
        assert.deepEqual([failed.exitCode, failed.stdout, failed.stderr], [7, 'out\n', 'oops\n']);
        assert.equal((await runIn(sandbox, ['no-such-command'])).exitCode, 127);
        assert.notEqual((await runIn(sandbox, ['true'], { workdir: '/no/such/dir' })).exitCode, 0);
        // A command that leaves a child holding its output still ends when its main process does.
        const left = await runIn(sandbox, ['sh', '-c', 'sleep 500 & echo main']);
        assert.deepEqual([left.exitCode, left.stdout], [0, 'main\n']);
        assert.notEqual(await runIn(sandbox, ['id', '-u']).then((r) => r.stdout.trim()), '0');
      } finally {
        await sandbox.destroy();
      }
    });

    sandboxTest("killing a command (its timeout) ends that command's process tree only; the sandbox and its other processes live on", async (t, create) => {
      const sandbox = await create(sandboxSpec(t));
      try {
        assert.equal((await runIn(sandbox, ['sh', '-c', 'sleep 600 >/dev/null 2>&1 &'])).exitCode, 0);
        // Killed once its tree exists (the child was forked before `started`), not after a guessed delay.
        const slow = await runIn(sandbox, ['sh', '-c', 'sleep 300 & echo started; sleep 301; echo never'], { onFirstOutput: (running) => running.kill() });
        assert.equal(slow.exitCode, 137);
        assert.equal(slow.signal, 'SIGKILL');
        assert.equal(slow.stdout, 'started\n');
        const after = await processList(sandbox);
        assert.match(after, /sleep 600/, 'the other background process lives on');
        assert.doesNotMatch(after, /sleep 30[01]/, 'the killed command and its child are gone');
        assert.equal((await runIn(sandbox, ['echo', 'still here'])).stdout, 'still here\n');
      } finally {
        await sandbox.destroy();
      }
    });

    sandboxTest('pause stops every process (no CPU) and resume continues them, or both are refused as the capabilities say', async (t, create) => {
      const sandbox = await create(sandboxSpec(t));
      try {
        if (!sandbox.capabilities.pause) {
          await assert.rejects(sandbox.pause(), (error: unknown) => isKindlingError(error));
          return;
        }
        assert.equal((await runIn(sandbox, ['sh', '-c', 'while :; do :; done >/dev/null 2>&1 &'])).exitCode, 0);
        const cpu = (): number => sandbox.usage()?.cpuMs ?? 0;
        await within(until(() => cpu() > 100), 30_000, 'the busy loop uses CPU');
        await sandbox.pause();
        const frozenAt = cpu();
        // A second of wall time passes, observed on the clock, while the CPU counter of a frozen sandbox stands still:
        // the loop's ~1000 ms stop. Under a loaded CI machine gvisor's sentry (in the sandbox's cgroup, its user
        // processes stopped) was seen to account 7.7 ms in that second for its own housekeeping: 25 ms of slack.
        const since = performance.now();
        await until(() => performance.now() - since > 1000);
        assert.ok(cpu() - frozenAt < 25, `a paused sandbox used ${cpu() - frozenAt} ms of CPU`);
        await sandbox.resume();
        await within(until(() => cpu() > frozenAt + 100), 30_000, 'the loop goes on after resume');
        assert.equal((await runIn(sandbox, ['echo', 'awake'])).stdout, 'awake\n');
      } finally {
        await sandbox.destroy();
      }
    });

    sandboxTest('destroy() ends every process and leaves nothing, may be called again, and later calls say the sandbox ended', async (t, create) => {
      const sandbox = await create(sandboxSpec(t));
      assert.equal((await runIn(sandbox, ['sh', '-c', 'sleep 600 >/dev/null 2>&1 & echo x > /work/f'])).exitCode, 0);
      await Promise.all([sandbox.destroy(), sandbox.destroy()]);
      await sandbox.destroy();
      await within(sandbox.disposed, 15_000, 'disposed after destroy()');
      assert.equal(sandbox.alive, false);
      assert.equal(sandbox.usage(), null);
      await assert.rejects(sandbox.exec({ command: ['true'], env: {}, workdir: '/work', stdin: false }), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_NOT_RUNNING');
      assert.equal((await t.executor.reap()).removed, 0, 'nothing of the sandbox is left for a reaper');
    });

    sandboxTest('a sandbox whose server crashed (never destroyed) is removed by the next reaper of the same owner', async (t) => {
      const owner = `${ownerPrefix(t)}-crash-${process.pid}`;
      const crashed = await t.create(owner);
      let sandbox: PersistentSandbox | null = null;
      try {
        sandbox = await crashed.createPersistentSandbox!(sandboxSpec(t));
        assert.equal((await runIn(sandbox, ['sh', '-c', 'sleep 600 >/dev/null 2>&1 &'])).exitCode, 0);
        // The crashed server's executor is abandoned as it is; a fresh one of the same owner starts and reaps.
        const next = await t.create(owner);
        try {
          assert.ok((await next.reap()).removed > 0, 'the reaper found the orphaned sandbox');
        } finally {
          await next.destroy();
        }
        await within(sandbox.disposed, 30_000, 'the orphaned sandbox ended');
        assert.equal(sandbox.alive, false);
      } finally {
        await sandbox?.destroy();
        await crashed.destroy();
      }
      await assertNothingLeft(t, owner);
    });

    /* ---- persistent sandboxes' files on disk (sandboxStorage) and ports, where the executor offers them ------------- */

    /** A case for executors whose persistent sandboxes keep their files on a disk of their own (`sandboxStorage`). */
    const storageTest = (title: string, body: (target: ConformanceTarget, create: NonNullable<Executor['createPersistentSandbox']>, storage: SandboxStorageOps) => Promise<void>): void => {
      test(`persistent sandbox storage: ${title}`, async (t, skip) => {
        const create = t.executor.createPersistentSandbox?.bind(t.executor);
        if (create === undefined) return skip(`${t.executor.name} offers no persistent sandboxes (no createPersistentSandbox)`);
        if (t.executor.sandboxStorage === undefined) return skip(`${t.executor.name} keeps no sandbox files on disk (no sandboxStorage): the API answers SNAPSHOTS_UNSUPPORTED`);
        await body(t, create, t.executor.sandboxStorage);
      });
    };
    const stored = { storage: { fromSnapshot: null } };
    const diskSpec = (t: ConformanceTarget, id: string, diskMb = 64): RunSpec => ({ ...sandboxSpec(t), id, limits: { ...DEFAULT_LIMITS, timeoutMs: 300_000, diskMb } });
    const storageId = (what: string): string => `conf-${what}-${randomBytes(4).toString('hex')}`;

    storageTest('files outlive the sandbox: a new one of the same id starts on the same disk (new processes); removeDisk ends them', async (t, create, storage) => {
      const id = storageId('disk');
      let sandbox = await create(diskSpec(t, id), stored);
      try {
        // Only the sleep goes to the background: `a && b && sleep &` would background the whole list, and the files
        // could still be unwritten when destroy() runs (seen on a loaded CI machine).
        const wrote = await runIn(sandbox, ['sh', '-c', 'echo kept > /work/note && mkdir -p /work/d && echo deep > /work/d/f && { sleep 600 >/dev/null 2>&1 & }']);
        assert.equal(wrote.exitCode, 0, wrote.stderr);
        await sandbox.destroy();
        assert.equal(sandbox.alive, false);
        sandbox = await create(diskSpec(t, id), stored);
        assert.equal((await runIn(sandbox, ['cat', '/work/note', '/work/d/f'])).stdout, 'kept\ndeep\n');
        assert.doesNotMatch(await processList(sandbox), /sleep 600/, 'the processes of the first start did not come back');
        await sandbox.destroy();
        await storage.removeDisk(id);
        sandbox = await create(diskSpec(t, id), stored);
        assert.equal((await runIn(sandbox, ['sh', '-c', 'cd /work && for f in * .[!.]*; do [ -e "$f" ] && echo "$f"; done; echo end'])).stdout, 'end\n', 'a removed disk starts empty');
      } finally {
        await sandbox.destroy();
        await storage.removeDisk(id);
      }
      assert.equal((await t.executor.reap()).removed, 0, 'nothing of the sandbox (container, mount) is left for a reaper');
    });

    storageTest('diskMb is enforced by the kernel: writing past it is ENOSPC in the process, and the sandbox lives on', async (t, create, storage) => {
      const id = storageId('full');
      const sandbox = await create(diskSpec(t, id, 16), stored);
      try {
        const full = await runIn(sandbox, ['sh', '-c', 'dd if=/dev/zero of=/work/big bs=1M count=64 2>&1; echo "exit $?"']);
        // ENOSPC on a disk image of its own; EDQUOT ("Disk quota exceeded") on a btrfs subvolume with a quota: the
        // writer's own error either way, never the host's disk filling up.
        assert.match(full.stdout, /No space left on device|Disk quota exceeded/, full.stdout);
        assert.doesNotMatch(full.stdout, /exit 0/);
        assert.equal((await runIn(sandbox, ['sh', '-c', 'rm /work/big && echo ok > /work/small && cat /work/small'])).stdout, 'ok\n');
      } finally {
        await sandbox.destroy();
        await storage.removeDisk(id);
      }
    });

    storageTest("a snapshot keeps one moment of the files; sandboxes made from it start with them and never see each other's or the parent's later writes", async (t, create, storage) => {
      const parentId = storageId('parent');
      const snapshotId = storageId('snap');
      const made: PersistentSandbox[] = [];
      const ids = [parentId];
      try {
        const parent = await create(diskSpec(t, parentId), stored);
        made.push(parent);
        assert.equal((await runIn(parent, ['sh', '-c', 'echo one > /work/a && { sleep 600 >/dev/null 2>&1 & }'])).exitCode, 0);
        const snap = await parent.snapshot!(snapshotId);
        assert.ok(snap.bytes >= 4, `a snapshot of 4 bytes of files reports ${snap.bytes} bytes`);
        assert.equal(snap.memory === true, parent.capabilities.memorySnapshot, 'a snapshot keeps memory exactly where the capability memorySnapshot says so');
        assert.match(await processList(parent), /sleep 600/, 'the parent runs on after its snapshot');
        assert.equal((await runIn(parent, ['sh', '-c', 'echo two > /work/a'])).exitCode, 0);
        const forks: PersistentSandbox[] = [];
        for (let i = 0; i < 2; i++) {
          const id = storageId(`fork${i}`);
          ids.push(id);
          const fork = await create(diskSpec(t, id), { storage: { fromSnapshot: snapshotId } });
          made.push(fork);
          forks.push(fork);
        }
        assert.equal((await runIn(forks[0]!, ['cat', '/work/a'])).stdout, 'one\n', 'a fork has the files of the moment of the snapshot');
        assert.equal((await runIn(forks[0]!, ['sh', '-c', 'echo mine > /work/a && echo new > /work/b'])).exitCode, 0);
        assert.equal((await runIn(forks[1]!, ['sh', '-c', 'cat /work/a; cd /work && echo *'])).stdout, 'one\na\n', "a fork never sees another's writes");
        assert.equal((await runIn(parent, ['cat', '/work/a'])).stdout, 'two\n');
        await assert.rejects(create(diskSpec(t, storageId('nosnap')), { storage: { fromSnapshot: 'conf-no-such-snapshot' } }), (error: unknown) => isKindlingError(error) && error.code === 'SNAPSHOT_NOT_FOUND');
      } finally {
        for (const sandbox of made) await sandbox.destroy();
        for (const id of ids) await storage.removeDisk(id);
        await storage.removeSnapshot(snapshotId);
      }
      assert.equal((await t.executor.reap()).removed, 0);
    });

    storageTest('commands started while a snapshot is being taken wait for it and run (they never fail because of it)', async (t, create, storage) => {
      const id = storageId('busy');
      const snapshotId = storageId('snap');
      const sandbox = await create(diskSpec(t, id, 256), stored);
      try {
        // Enough files that the copy takes a while (the sandbox is frozen meanwhile).
        const wrote = await runIn(sandbox, ['sh', '-c', 'mkdir data && for i in $(seq 60); do head -c 1048576 /dev/urandom > data/f$i; done']);
        assert.equal(wrote.exitCode, 0, wrote.stderr);
        let snapshotDone = false;
        const snapshotting = sandbox.snapshot!(snapshotId).finally(() => (snapshotDone = true));
        const results: { exitCode: number; stdout: string }[] = [];
        // Commands one after another until the snapshot ended: some of them start while it is taken.
        while (!snapshotDone) results.push(await runIn(sandbox, ['echo', 'ran']));
        const snap = await snapshotting;
        assert.ok(snap.bytes >= 60 * 1048576, `bytes ${snap.bytes}`);
        assert.ok(results.length > 0);
        for (const result of results) assert.deepEqual([result.exitCode, result.stdout], [0, 'ran\n']);
      } finally {
        await sandbox.destroy();
        await storage.removeDisk(id);
        await storage.removeSnapshot(snapshotId);
      }
    });

    storageTest("start-up reaping (sandboxStorage.reap) removes the disks and snapshots not kept, and keeps those kept", async (t, create, storage) => {
      const keep = storageId('keep');
      const gone = storageId('gone');
      const snapshotId = storageId('snap');
      try {
        for (const id of [keep, gone]) {
          const sandbox = await create(diskSpec(t, id), stored);
          try {
            assert.equal((await runIn(sandbox, ['sh', '-c', `echo ${id} > /work/id`])).exitCode, 0);
            if (id === keep) await sandbox.snapshot!(snapshotId);
          } finally {
            await sandbox.destroy();
          }
        }
        assert.ok((await storage.reap(new Set([keep]), new Set())) >= 2, 'the disk of the other sandbox and the snapshot were removed');
        await assert.rejects(create(diskSpec(t, storageId('late')), { storage: { fromSnapshot: snapshotId } }), (error: unknown) => isKindlingError(error) && error.code === 'SNAPSHOT_NOT_FOUND');
        for (const [id, expected] of [[keep, `${keep}\n`], [gone, '']] as const) {
          const sandbox = await create(diskSpec(t, id), stored);
          try {
            assert.equal((await runIn(sandbox, ['sh', '-c', 'cat /work/id 2>/dev/null; true'])).stdout, expected, id);
          } finally {
            await sandbox.destroy();
          }
        }
      } finally {
        for (const id of [keep, gone]) await storage.removeDisk(id);
        await storage.removeSnapshot(snapshotId);
      }
    });

    test("persistent sandbox: ports: connectPort reaches a server on the sandbox's own loopback (it has no network); nothing listening is SANDBOX_PORT_UNREACHABLE", async (t, skip) => {
      const create = t.executor.createPersistentSandbox?.bind(t.executor);
      if (create === undefined) return skip(`${t.executor.name} offers no persistent sandboxes (no createPersistentSandbox)`);
      const sandbox = await create({ ...sandboxSpec(t), ...(t.images.python === undefined ? {} : { image: t.images.python }) });
      try {
        if (sandbox.connectPort === undefined) return skip(`${t.executor.name} cannot reach a sandbox's ports (no connectPort): the API answers SANDBOXES_UNSUPPORTED`);
        const options = { idleTimeoutMs: 10_000, connectTimeoutMs: 5_000 };
        await assert.rejects(sandbox.connectPort(8123, options), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_PORT_UNREACHABLE');
        // A tiny line server: python3 where the image has it, else the shell with busybox nc.
        const serve = t.images.python === undefined
          ? ['sh', '-c', 'while :; do echo "pong $(cat /work/name)" | nc -l -p 8123 127.0.0.1; done >/dev/null 2>&1 &']
          : ['sh', '-c', `python3 -c "import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8123)); s.listen(8)
while True:
    c, _ = s.accept(); c.recv(100); c.sendall(b'pong ' + open('/work/name', 'rb').read()); c.close()" >/dev/null 2>&1 &`];
        assert.equal((await runIn(sandbox, ['sh', '-c', 'echo inside > /work/name'])).exitCode, 0);
        assert.equal((await runIn(sandbox, serve)).exitCode, 0);
        const answer = await within(
          (async () => {
            for (;;) {
              try {
                const stream = await sandbox.connectPort!(8123, options);
                const chunks: Buffer[] = [];
                // Destroying a relay that already ended reports an AbortError; the answer is what counts here.
                stream.on('error', () => {});
                stream.on('data', (chunk: Buffer) => chunks.push(chunk));
                const ended = new Promise((resolve) => stream.once('end', resolve).once('close', resolve));
                stream.write('ping\n');
                await ended;
                stream.destroy();
                return Buffer.concat(chunks).toString();
              } catch (error) {
                // Not listening yet: observed again shortly.
                if (!(isKindlingError(error) && error.code === 'SANDBOX_PORT_UNREACHABLE')) throw error;
                await new Promise((resolve) => setTimeout(resolve, 50));
              }
            }
          })(),
          30_000,
          'the server in the sandbox answered through connectPort',
        );
        assert.equal(answer.trim(), 'pong inside');
        await within(until(() => sandbox.portConnections === 0), 10_000, 'the ended connection is no longer counted');
      } finally {
        await sandbox.destroy();
      }
    });

    /* ---- hibernation and memory snapshots, as the capabilities say ----------------------------------------------- */

    /**
     * A process whose state lives in its memory: a shell loop counting in a variable, writing each value to `file`
     * (only the file is read back). A new process tree would count from 1 again; the same process goes on.
     */
    const startCounter = async (sandbox: PersistentSandbox, file: string): Promise<void> => {
      const started = await runIn(sandbox, ['sh', '-c', `i=0; while :; do i=$((i+1)); echo $i > ${file}.new && mv ${file}.new ${file}; sleep 0.1; done >/dev/null 2>&1 &`]);
      assert.equal(started.exitCode, 0, started.stderr);
    };
    const readCounter = async (sandbox: PersistentSandbox, file: string): Promise<number> => Number((await runIn(sandbox, ['sh', '-c', `cat ${file} 2>/dev/null || echo 0`])).stdout.trim());
    /** Resolves with the counter once it reached `atLeast` (the loop runs). */
    const counterReaches = async (sandbox: PersistentSandbox, file: string, atLeast: number): Promise<number> => {
      let value = 0;
      await within(
        (async () => {
          while ((value = await readCounter(sandbox, file)) < atLeast) await new Promise((resolve) => setTimeout(resolve, 100));
        })(),
        60_000,
        `the counter in ${file} reached ${atLeast}`,
      );
      return value;
    };

    sandboxTest('hibernate saves processes with their memory and ends the sandbox (RAM released); a restore brings them back, or hibernate() is absent as the capabilities say', async (t, create) => {
      const spec = sandboxSpec(t);
      const sandbox = await create(spec, { storage: { fromSnapshot: null } });
      let restored: PersistentSandbox | null = null;
      try {
        if (!sandbox.capabilities.hibernate) {
          assert.equal(sandbox.hibernate, undefined, 'hibernate capability false, yet hibernate() is offered');
          return;
        }
        assert.equal(typeof sandbox.hibernate, 'function', 'hibernate capability true, yet no hibernate()');
        await startCounter(sandbox, '/work/counter');
        const before = await counterReaches(sandbox, '/work/counter', 3);
        const { bytes } = await sandbox.hibernate!();
        assert.ok(bytes > 0, `the saved image has ${bytes} bytes`);
        // Ended: no process of it runs (nothing left for a reaper either), no memory is accounted to it.
        await within(sandbox.disposed, 30_000, 'the hibernated sandbox ended');
        assert.equal(sandbox.alive, false);
        assert.equal(sandbox.usage(), null);
        assert.equal((await t.executor.reap()).removed, 0, 'a process or resource of the hibernated sandbox is still there');
        await assert.rejects(sandbox.exec({ command: ['true'], env: {}, workdir: '/work', stdin: false }), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_NOT_RUNNING');
        restored = await create(spec, { storage: { fromSnapshot: null }, restore: 'hibernated' });
        // The same process, with its memory: it counts on from where it was (a new one would restart at 1).
        const at = await readCounter(restored, '/work/counter');
        assert.ok(at >= before, `after the restore the counter reads ${at}, before the hibernation ${before}`);
        await counterReaches(restored, '/work/counter', at + 3);
        assert.equal((await runIn(restored, ['echo', 'commands work'])).stdout, 'commands work\n');
      } finally {
        await sandbox.destroy();
        await restored?.destroy();
        await t.executor.sandboxStorage?.removeDisk(spec.id);
      }
    });

    sandboxTest('restoring a hibernation that is not there (never made, or removed with the disk) is SANDBOX_STATE_LOST', async (t, create, skip) => {
      const probe = await create(sandboxSpec(t));
      const capable = probe.capabilities.hibernate;
      await probe.destroy();
      if (!capable) return skip(`${t.executor.name} does not hibernate (capability false): there is no saved image to lose`);
      const spec = sandboxSpec(t);
      await assert.rejects(create(spec, { storage: { fromSnapshot: null }, restore: 'hibernated' }), (error: unknown) => isKindlingError(error) && error.code === 'SANDBOX_STATE_LOST');
      await t.executor.sandboxStorage?.removeDisk(spec.id);
      assert.equal((await t.executor.reap()).removed, 0, 'the refused restore left something behind');
    });

    sandboxTest('a memory snapshot brings its processes back in every sandbox made from it, or snapshots say they keep files only', async (t, create, skip) => {
      if (t.executor.sandboxStorage === undefined) return skip(`${t.executor.name} keeps no snapshots (no sandboxStorage)`);
      const source = sandboxSpec(t);
      const sandbox = await create(source, { storage: { fromSnapshot: null } });
      const snapshotId = `snap-${source.id}`;
      const forks: PersistentSandbox[] = [];
      const forkSpecs: RunSpec[] = [];
      try {
        if (sandbox.snapshot === undefined) return skip(`${t.executor.name}'s sandboxes offer no snapshot()`);
        if (!sandbox.capabilities.memorySnapshot) {
          const snap = await sandbox.snapshot(snapshotId);
          assert.notEqual(snap.memory, true, 'memorySnapshot capability false, yet a snapshot reports memory');
          return;
        }
        await startCounter(sandbox, '/work/counter');
        const before = await counterReaches(sandbox, '/work/counter', 3);
        const snap = await sandbox.snapshot(snapshotId);
        assert.equal(snap.memory, true, 'memorySnapshot capability true, yet the snapshot kept no memory');
        // The source goes on after its snapshot.
        await counterReaches(sandbox, '/work/counter', before + 3);
        for (let i = 0; i < 2; i++) {
          const spec = sandboxSpec(t);
          forkSpecs.push(spec);
          const fork = await create(spec, { storage: { fromSnapshot: snapshotId } });
          forks.push(fork);
          const at = await readCounter(fork, '/work/counter');
          assert.ok(at >= before, `fork ${i}: the counter reads ${at}, ${before} when snapshotted`);
          await counterReaches(fork, '/work/counter', at + 3);
        }
        // Forks share nothing later: a file written in one is not in the other.
        assert.equal((await runIn(forks[0]!, ['sh', '-c', 'echo mine > /work/only-here'])).exitCode, 0);
        assert.notEqual((await runIn(forks[1]!, ['cat', '/work/only-here'])).exitCode, 0);
        // A fork started again (its processes ended: a server's crash, a hibernation whose image is gone) is a new
        // process tree on its own files, which moved on from the snapshot's: the snapshot's processes come back once.
        await forks[0]!.destroy();
        const again = await create(forkSpecs[0]!, { storage: { fromSnapshot: snapshotId } });
        forks.push(again);
        assert.equal((await runIn(again, ['cat', '/work/only-here'])).stdout, 'mine\n', "the restarted fork's own files");
        assert.doesNotMatch(await processList(again), /\/work\/counter/, "a restart brought the snapshot's processes back over files that moved on");
      } finally {
        await sandbox.destroy();
        for (const fork of forks) await fork.destroy();
        await t.executor.sandboxStorage.removeDisk(source.id);
        for (const spec of forkSpecs) await t.executor.sandboxStorage.removeDisk(spec.id);
        await t.executor.sandboxStorage.removeSnapshot(snapshotId);
      }
    });

    /* ---- the executor's own end: close() drains, destroy() aborts ------------------------------------------------- */

    test('close() waits for in-flight executions to finish, refuses new ones, may be called again, and leaves nothing', async (t) => {
      const owner = `${ownerPrefix(t)}-close-${process.pid}`;
      const executor = await t.create(owner);
      try {
        const running = await startCollecting(executor, base(t, { command: ['sh', '-c', 'sleep 1; echo done'] }));
        await Promise.all([executor.close(), executor.close()]);
        // Drained, not killed: the execution ran to its end.
        const info = await within(running.done, 5_000, 'the execution ended by the time close() resolved');
        assert.equal(info.exitCode, 0);
        assert.equal(running.stdout(), 'done\n');
        await executor.close();
        await assert.rejects(executor.start(base(t, { command: ['true'] })), (error: unknown) => isKindlingError(error) && error.code === 'SHUTTING_DOWN');
      } finally {
        await executor.destroy();
      }
      await assertNothingLeft(t, owner);
    });

    test('destroy() kills in-flight executions at once, may be called again (also after close), and leaves nothing', async (t) => {
      const owner = `${ownerPrefix(t)}-destroy-${process.pid}`;
      const executor = await t.create(owner);
      const running = await startCollecting(executor, base(t, { command: ['sh', '-c', 'sleep 100; echo never'] }));
      const startedAt = performance.now();
      await within(Promise.all([executor.destroy(), executor.destroy()]), 30_000, 'destroy()');
      // Ended by the kill (a non-zero exit, or a platform error for an execution whose sandbox vanished), not by `sleep`.
      const ended = await within(running.done.then((info) => info.exitCode, () => 'failed'), 10_000, 'the killed execution settled');
      assert.notEqual(ended, 0);
      assert.equal(running.stdout(), '');
      assert.ok(performance.now() - startedAt < 30_000);
      await executor.destroy();
      await executor.close();
      await assertNothingLeft(t, owner);
    });
  });
}
