/**
 * The POSIX sh script that turns a generic, already started sandbox into the requested process: stdio from the FIFOs,
 * the working directory, exactly the requested environment, then exec of the command. Errors of `cd`/`exec` land on
 * the user's stderr because the redirections come first.
 */
export interface LaunchScriptOptions {
  command: string[];
  env: Record<string, string>;
  workdir: string;
  stdinPath: string | null;
  stdoutPath: string;
  stderrPath: string;
  /**
   * When set, the command runs as a child of the shell instead of replacing it, and after it ends the shell writes the
   * sandbox cgroup's CPU time and peak memory here (the kernel's accounting, read from inside before the container
   * and its cgroup go), then exits with the command's status. See `parseCgroupUsage`.
   */
  usagePath?: string;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

export function buildLaunchScript(options: LaunchScriptOptions): string {
  if (options.command.length === 0) throw new Error('command must not be empty');
  const lines: string[] = [];
  const stdin = options.stdinPath === null ? '/dev/null' : shellQuote(options.stdinPath);
  lines.push(`exec <${stdin} >${shellQuote(options.stdoutPath)} 2>${shellQuote(options.stderrPath)}`);
  // A work dir under /tmp may not exist yet (the tmpfs is mounted at /tmp); every other one is its own mount.
  lines.push(`mkdir -p -- ${shellQuote(options.workdir)} 2>/dev/null; cd -- ${shellQuote(options.workdir)} || exit 126`);
  // Start from an empty environment so nothing of the image's or the engine's leaks in unasked: every variable the
  // shell inherited is unset, then exactly the requested ones are exported by the shell itself. Not `env -i NAME=value
  // command`: the values would sit in that process's argv, which every user of the host can read in /proc.
  const assignments = Object.entries(options.env).map(([name, value]) => {
    if (!ENV_NAME.test(name)) throw new Error(`invalid environment variable name: ${name}`);
    return `${name}=${shellQuote(value)}`;
  });
  // env (no assignments in its argv) then finds the command as before: through the PATH the command gets, or execvp's
  // default path when it gets none. Its own path is looked up before the shell's PATH is unset.
  const clear = `kindling_env=$(command -v env); for kindling_name in $(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p'); do unset "$kindling_name"; done; unset kindling_name`;
  const run = `${clear}; ${assignments.length > 0 ? `export ${assignments.join(' ')}; ` : ''}exec "$kindling_env" -- ${options.command.map(shellQuote).join(' ')}`;
  if (options.usagePath === undefined) {
    lines.push(run);
  } else {
    const usage = shellQuote(options.usagePath);
    // In a subshell: the launch shell keeps its PATH for the usage lines below.
    lines.push(`(${run})`);
    lines.push('rc=$?');
    // cgroup v1 (cpuacct.usage in ns, memory.max_usage_in_bytes), else v2 (cpu.stat usage_usec, memory.peak).
    lines.push(
      `{ cat /sys/fs/cgroup/cpuacct/cpuacct.usage /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null || { grep '^usage_usec' /sys/fs/cgroup/cpu.stat; cat /sys/fs/cgroup/memory.peak; } 2>/dev/null; } >${usage}`,
    );
    lines.push('exit $rc');
  }
  return `${lines.join('\n')}\n`;
}

/** Reads what the launch script wrote to its usage path: v1 (ns, bytes) or v2 ("usage_usec N", bytes). */
export function parseCgroupUsage(text: string): { cpuMs: number | null; memoryPeakBytes: number | null } {
  const lines = text.trim().split('\n').map((line) => line.trim());
  if (lines.length < 2 || lines[0] === '') return { cpuMs: null, memoryPeakBytes: null };
  const [first = '', second = ''] = lines;
  const cpu = first.startsWith('usage_usec') ? Number(first.split(/\s+/)[1]) / 1000 : Number(first) / 1e6;
  const memory = Number(second);
  return { cpuMs: Number.isFinite(cpu) ? Math.round(cpu * 100) / 100 : null, memoryPeakBytes: Number.isFinite(memory) ? memory : null };
}
