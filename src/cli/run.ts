import { fstatSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { RUNTIME_NAMES } from '../core/types.js';
import { collect, guarded, parseNumber, readAll } from './options.js';
import { Kindling, type ExecuteSpec } from '@kindling/sdk';

export interface ClientDefaults {
  url: string;
  apiKey: string | undefined;
}

/**
 * Reads stdin when asked to, or by default when it is a pipe or a file (`echo x | kindling run …`, `< file`). A
 * terminal, a socket or nothing at all (cron, CI, another program's child) is not read, so the command never hangs.
 */
function shouldReadStdin(flag: boolean | undefined): boolean {
  if (flag !== undefined) return flag;
  try {
    const info = fstatSync(0);
    return info.isFIFO() || info.isFile();
  } catch {
    return false;
  }
}


export function clientOptions(command: Command, defaults: ClientDefaults): Command {
  return (
    command
      .option('--url <url>', 'server URL (env KINDLING_URL)', defaults.url)
      .option('--api-key <key>', 'API key (default: env KINDLING_API_KEY)')
      .option('--tenant <name>', 'with the admin key: act as this tenant (x-kindling-tenant)')
      // The key from the environment is filled in at run time, never as a commander default: --help must not print it.
      .hook('preAction', (_program, action) => {
        if (action.opts().apiKey === undefined && defaults.apiKey !== undefined) action.setOptionValue('apiKey', defaults.apiKey);
      })
  );
}

/** `kindling run`: one execution through the SDK, output streamed live, exit code passed through. */
export function registerRunCommand(program: Command, defaults: ClientDefaults): void {
  const command = program
    .command('run')
    .description('run code or a command once in a fresh sandbox; stdin is piped through, the exit code is passed on')
    .argument('[command...]', 'with --image: the command and its arguments (after --)')
    .option('-r, --runtime <runtime>', RUNTIME_NAMES.join(' | '))
    .option('-c, --code <code>', 'source code to run with --runtime')
    .option('-f, --file <path>', 'read the source code from a file')
    .option('-i, --image <image>', 'image to run the command in, e.g. kindling/base')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory inside the sandbox')
    .option('--timeout-ms <ms>', 'wall-clock limit in milliseconds', parseNumber('--timeout-ms'))
    .option('--memory-mb <mb>', 'memory limit in MiB', parseNumber('--memory-mb'))
    .option('--cpus <n>', 'CPU quota in cores', parseNumber('--cpus'))
    .option('--pids <n>', 'process limit', parseNumber('--pids'))
    .option('--open-files <n>', 'open file descriptors per process (default 1024)', parseNumber('--open-files'))
    .option('--executor <name>', 'docker | sandbox | microvm | gvisor')
    .option('--stdin', 'send standard input to the program (default: only when stdin is a pipe or a file)')
    .option('--no-stdin', 'never read standard input')
    .option('--json', 'print the whole result as JSON instead of streaming the output');
  clientOptions(command, defaults).action(async (args: string[], options: Record<string, unknown>) => {
    const spec: ExecuteSpec = {};
    if (options.image !== undefined) {
      if (args.length === 0) throw new Error('--image needs a command after --, e.g. kindling run --image kindling/base -- sh -c "echo hi"');
      spec.image = options.image as string;
      spec.command = args;
    } else {
      if (options.runtime === undefined) throw new Error('give --runtime with -c/--file, or --image with a command');
      spec.runtime = options.runtime as ExecuteSpec['runtime'];
      if (options.file !== undefined && options.code !== undefined) throw new Error('give either -c CODE or --file PATH, not both');
      if (options.file !== undefined) spec.code = await readFile(options.file as string, 'utf8');
      else if (options.code !== undefined) spec.code = options.code as string;
      else throw new Error('--runtime needs code: -c CODE or --file PATH');
    }
    const env: Record<string, string> = {};
    for (const pair of options.env as string[]) {
      const at = pair.indexOf('=');
      if (at <= 0) throw new Error(`--env takes KEY=VALUE, got "${pair}"`);
      env[pair.slice(0, at)] = pair.slice(at + 1);
    }
    if (Object.keys(env).length > 0) spec.env = env;
    if (options.workdir !== undefined) spec.workdir = options.workdir as string;
    if (options.timeoutMs !== undefined) spec.timeoutMs = options.timeoutMs as number;
    if (options.memoryMb !== undefined) spec.memoryMb = options.memoryMb as number;
    if (options.cpus !== undefined) spec.cpus = options.cpus as number;
    if (options.pids !== undefined) spec.pids = options.pids as number;
    if (options.openFiles !== undefined) spec.openFiles = options.openFiles as number;
    if (options.executor !== undefined) spec.executor = options.executor as ExecuteSpec['executor'];
    if (shouldReadStdin(options.stdin as boolean | undefined)) spec.stdin = new Uint8Array(await readAll(process.stdin));

    const client = new Kindling({ url: options.url as string, apiKey: options.apiKey as string | undefined, ...(typeof options.tenant === 'string' ? { tenant: options.tenant } : {}) });
    await guarded(async () => {
      if (options.json) {
        const result = await client.execute(spec);
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
        process.exitCode = result.exitCode;
        return;
      }
      const result = await client.execute(spec, {
        onStdout: (data) => process.stdout.write(data),
        onStderr: (data) => process.stderr.write(data),
      });
      if (result.timedOut) process.stderr.write(`kindling: timed out after ${spec.timeoutMs === undefined ? "the server's default timeout" : `${spec.timeoutMs} ms`} (raise --timeout-ms)\n`);
      if (result.oomKilled) process.stderr.write('kindling: killed: out of memory (raise --memory-mb)\n');
      if (result.truncated) process.stderr.write('kindling: output truncated at the output limit\n');
      process.exitCode = result.exitCode;
    });
  });
}

export function registerStatusCommand(program: Command, defaults: ClientDefaults): void {
  clientOptions(program.command('status').description("show the server's readiness and executors"), defaults).action(
    async (options: { url: string; apiKey?: string }) => {
      const client = new Kindling({ url: options.url, apiKey: options.apiKey });
      const ready = await client.ready();
      process.stdout.write(`${JSON.stringify(ready, null, 2)}\n`);
      process.exitCode = ready.status === 'ready' ? 0 : 1;
    },
  );
}
