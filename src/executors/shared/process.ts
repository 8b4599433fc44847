/**
 * Small process helpers the executors, the image builder and the server share: signal names, liveness of a pid, and
 * quoting for POSIX sh. Each was written several times before; one copy keeps their edge cases (EPERM, codes > 128+64)
 * the same everywhere.
 */
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

/** The name of signal number `n` (9 -> 'SIGKILL'), or null when this platform has no such signal. */
export function signalName(n: number): string | null {
  for (const [name, number] of Object.entries(osConstants.signals)) if (number === n) return name;
  return null;
}

/**
 * The signal a shell-style exit status stands for (137 -> 'SIGKILL'): statuses 129..192 are 128 + the signal number.
 * Null for any other status, or when the number names no signal here.
 */
export function signalOfExitCode(exitCode: number): string | null {
  if (exitCode <= 128 || exitCode > 128 + 64) return null;
  return signalName(exitCode - 128);
}

/** The number of a signal name ('SIGKILL' -> 9), or `fallback` when the name is unknown here. */
export function signalNumber(name: NodeJS.Signals | string, fallback = 9): number {
  return (osConstants.signals as Record<string, number | undefined>)[name] ?? fallback;
}

/**
 * Whether a process with this pid exists. EPERM means it does (owned by another user); only ESRCH (or an invalid
 * pid) means it does not. A pid may of course have been reused by an unrelated process: callers check what it is.
 */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One word for POSIX sh, whatever it holds: single-quoted, each ' written as '\''. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/**
 * SIGKILLs every pid `tree()` names, again and again (a process may fork while its tree is killed), until it names
 * none; gives up after ~0.7 s of rounds (50 rounds, the pause growing to 20 ms) when something keeps coming back.
 */
export async function killUntilGone(tree: () => number[]): Promise<void> {
  for (let round = 0; round < 50; round++) {
    const pids = tree();
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(1 + round, 20)));
  }
}

/**
 * Whether `pid` has exited, also when its parent (this process) has not reaped it yet: a killed child stays a zombie
 * (state Z in /proc/PID/stat) until node handles its SIGCHLD, and `child.exitCode` says nothing until then.
 */
export function processExited(pid: number | undefined): boolean {
  if (pid === undefined) return true;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return true;
  }
  // "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parentheses).
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state === 'Z' || state === 'X';
}
