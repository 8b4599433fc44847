import { shellQuote } from './process.js';

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
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

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
  lines.push(`${clear}; ${assignments.length > 0 ? `export ${assignments.join(' ')}; ` : ''}exec "$kindling_env" -- ${options.command.map(shellQuote).join(' ')}`);
  return `${lines.join('\n')}\n`;
}
