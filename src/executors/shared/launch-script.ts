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
  // Start from an empty environment so nothing of the image's or the engine's leaks in unasked.
  const assignments = Object.entries(options.env).map(([name, value]) => {
    if (!ENV_NAME.test(name)) throw new Error(`invalid environment variable name: ${name}`);
    return `${name}=${shellQuote(value)}`;
  });
  const run = `env -i -- ${assignments.join(' ')} ${options.command.map(shellQuote).join(' ')}`;
  lines.push(`exec ${run}`);
  return `${lines.join('\n')}\n`;
}
