import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import type { SandboxInfo } from '@kindling/sdk';
import { clientFrom, guarded } from './functions.js';
import { collect, parseNumber, readAll } from './options.js';
import { clientOptions, type ClientDefaults } from './run.js';

function envFrom(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`--env takes KEY=VALUE, got "${pair}"`);
    env[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return env;
}

const line = (sb: SandboxInfo): string =>
  `${sb.id.padEnd(30)} ${sb.state.padEnd(8)} ${sb.image.padEnd(18)} ${sb.createdAt}${sb.usage?.cpuMs != null ? `  cpu ${Math.round(sb.usage.cpuMs)} ms` : ''}${sb.stopReason ? `  (${sb.stopReason})` : ''}`;

/** `SANDBOX:PATH` names a file in a sandbox; anything else a local file (`-`: stdin/stdout). */
function remote(spec: string): { id: string; path: string } | null {
  const match = /^(sb_[A-Za-z0-9]+):(.+)$/.exec(spec);
  return match ? { id: match[1]!, path: match[2]! } : null;
}

/** `kindling sandbox create|list|get|exec|cp|ls|pause|resume|rm`: persistent sandboxes. */
export function registerSandboxCommands(program: Command, defaults: ClientDefaults): void {
  const sandbox = program.command('sandbox').alias('sandboxes').description('persistent sandboxes: create one, run commands in it, copy files, pause, resume, remove');

  clientOptions(
    sandbox
      .command('create')
      .description('create a sandbox; prints its id')
      .option('-r, --runtime <name>', 'runtime whose image to use (bash, python, node, rust)')
      .option('-i, --image <image>', 'image, e.g. kindling/base')
      .option('--executor <name>', 'executor (only "sandbox" hosts persistent sandboxes in this version)')
      .option('--memory-mb <mb>', 'memory of the whole sandbox', parseNumber('--memory-mb'))
      .option('--cpus <n>', 'CPU quota in cores', parseNumber('--cpus'))
      .option('--pids <n>', 'processes at once', parseNumber('--pids'))
      .option('--disk-mb <mb>', 'size of /work and of /tmp', parseNumber('--disk-mb'))
      .option('-e, --env <KEY=VALUE>', 'environment of every command (repeatable)', collect, [])
      .option('--idle-timeout-ms <ms>', 'pause after this long without activity (default 600000)', parseNumber('--idle-timeout-ms'))
      .option('--max-lifetime-ms <ms>', 'stop and remove this long after creation (default 3600000)', parseNumber('--max-lifetime-ms'))
      .option('-m, --metadata <KEY=VALUE>', 'a label of yours (repeatable)', collect, [])
      .option('--json', 'print JSON'),
    defaults,
  ).action(async (options: Record<string, unknown>) =>
    guarded(async () => {
      const limits: Record<string, number> = {};
      for (const key of ['memoryMb', 'cpus', 'pids', 'diskMb']) if (typeof options[key] === 'number') limits[key] = options[key] as number;
      const env = envFrom(options.env as string[]);
      const metadata = envFrom(options.metadata as string[]);
      const sb = await clientFrom(options).sandboxes.create({
        ...(options.runtime ? { runtime: options.runtime as string } : {}),
        ...(options.image ? { image: options.image as string } : {}),
        ...(options.executor ? { executor: options.executor as string } : {}),
        ...(Object.keys(limits).length > 0 ? { limits } : {}),
        ...(Object.keys(env).length > 0 ? { env } : {}),
        ...(Object.keys(metadata).length > 0 ? { metadata } : {}),
        ...(typeof options.idleTimeoutMs === 'number' ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
        ...(typeof options.maxLifetimeMs === 'number' ? { maxLifetimeMs: options.maxLifetimeMs } : {}),
      });
      process.stdout.write(options.json ? `${JSON.stringify(sb.info, null, 2)}\n` : `${sb.id}\n`);
    }),
  );

  clientOptions(sandbox.command('list').alias('ls').description("list the tenant's sandboxes").option('--state <state>', 'running, paused or stopped').option('--json', 'print JSON'), defaults).action(
    async (options: Record<string, unknown>) =>
      guarded(async () => {
        const list = await clientFrom(options).sandboxes.list(options.state ? { state: options.state as SandboxInfo['state'] } : {});
        if (options.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        else for (const sb of list) process.stdout.write(`${line(sb)}\n`);
      }),
  );

  clientOptions(sandbox.command('get').description('show a sandbox as JSON').argument('<id>'), defaults).action(async (id: string, options: Record<string, unknown>) =>
    guarded(async () => {
      process.stdout.write(`${JSON.stringify(await clientFrom(options).sandboxes.get(id), null, 2)}\n`);
    }),
  );

  clientOptions(
    sandbox
      .command('exec')
      .description("run a command in the sandbox; its output is printed, its exit code is kindling's")
      .argument('<id>')
      .argument('<command...>', 'the command and its arguments (after --)')
      .option('-e, --env <KEY=VALUE>', 'environment variable for this command (repeatable)', collect, [])
      .option('-w, --workdir <dir>', 'directory to start in (default /work)')
      .option('-t, --timeout-ms <ms>', 'kill the command (not the sandbox) after this long (default 60000)', parseNumber('--timeout-ms'))
      .option('--stdin', "send kindling's stdin to the command")
      .option('--no-auto-resume', 'fail with SANDBOX_PAUSED instead of resuming a paused sandbox')
      .option('--json', 'print the result as JSON'),
    defaults,
  ).action(async (id: string, command: string[], options: Record<string, unknown>) =>
    guarded(async () => {
      const env = envFrom(options.env as string[]);
      const result = await clientFrom(options).sandboxes.run(id, command, {
        ...(Object.keys(env).length > 0 ? { env } : {}),
        ...(options.workdir ? { workdir: options.workdir as string } : {}),
        ...(typeof options.timeoutMs === 'number' ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.stdin ? { stdin: (await readAll(process.stdin)).toString('utf8') } : {}),
        ...(options.autoResume === false ? { autoResume: false } : {}),
      });
      if (options.json) {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      } else {
        process.stdout.write(result.stdout);
        process.stderr.write(result.stderr);
        if (result.timedOut) process.stderr.write(`kindling: the command timed out and was killed\n`);
      }
      process.exitCode = result.exitCode;
    }),
  );

  clientOptions(
    sandbox
      .command('cp')
      .description('copy a file into or out of a sandbox: `cp ./local sb_ID:/work/x` or `cp sb_ID:/work/x ./local` (- is stdin/stdout)')
      .argument('<from>')
      .argument('<to>'),
    defaults,
  ).action(async (from: string, to: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const [source, target] = [remote(from), remote(to)];
      const sandboxes = clientFrom(options).sandboxes;
      if ((source === null) === (target === null)) throw new Error('exactly one side of cp must be SANDBOX_ID:PATH');
      if (target !== null) {
        const data = from === '-' ? await readAll(process.stdin) : await readFile(from);
        const written = await sandboxes.writeFile(target.id, target.path, data);
        process.stderr.write(`${written.size} bytes -> ${target.id}:${written.path}\n`);
      } else {
        const data = await sandboxes.readFile(source!.id, source!.path);
        if (to === '-') process.stdout.write(data);
        else await writeFile(to, data);
      }
    }),
  );

  clientOptions(sandbox.command('files').description('list a directory of a sandbox').argument('<id>').argument('[path]', 'directory (default /work)', '/work').option('--json', 'print JSON'), defaults).action(
    async (id: string, path: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const entries = await clientFrom(options).sandboxes.listFiles(id, path);
        if (options.json) process.stdout.write(`${JSON.stringify(entries, null, 2)}\n`);
        else for (const entry of entries) process.stdout.write(`${entry.mode.padStart(4)} ${entry.type.padEnd(7)} ${String(entry.size).padStart(10)} ${entry.modifiedAt} ${entry.name}\n`);
      }),
  );

  for (const [name, what] of [
    ['pause', 'freeze every process of a sandbox (no CPU used)'],
    ['resume', 'thaw a paused sandbox'],
  ] as const) {
    clientOptions(sandbox.command(name).description(what).argument('<id>'), defaults).action(async (id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const info = await clientFrom(options).sandboxes[name](id);
        process.stdout.write(`${info.id} ${info.state}\n`);
      }),
    );
  }

  /* --- ports ------------------------------------------------------------------------------------------------------ */
  clientOptions(
    sandbox
      .command('port')
      .description("print the URL of a port inside a sandbox (requests need the API key); --forward serves it on a local port that adds the key, for a browser or curl")
      .argument('<id>')
      .argument('<port>', 'TCP port inside the sandbox', parseNumber('port'))
      .option('--forward <localPort>', 'listen on 127.0.0.1:localPort and pass every request (and WebSocket) on to the sandbox port, with the key', parseNumber('--forward')),
    defaults,
  ).action(async (id: string, port: number, options: Record<string, unknown>) =>
    guarded(async () => {
      const client = clientFrom(options);
      await client.sandboxes.get(id);
      const url = client.sandboxes.portUrl(id, port);
      if (options.forward === undefined) {
        process.stdout.write(`${url}\n`);
        return;
      }
      const { forwardPort } = await import('./port-forward.js');
      const local = await forwardPort(url, options.apiKey as string | undefined, options.forward as number);
      process.stdout.write(`forwarding http://127.0.0.1:${local} -> ${url} (Ctrl-C stops)\n`);
      await new Promise(() => {});
    }),
  );
  /* --- end of ports ----------------------------------------------------------------------------------------------- */

  clientOptions(sandbox.command('rm').alias('kill').description('delete sandboxes: every process killed, their files gone').argument('<ids...>'), defaults).action(
    async (ids: string[], options: Record<string, unknown>) =>
      guarded(async () => {
        for (const id of ids) {
          await clientFrom(options).sandboxes.delete(id);
          process.stdout.write(`deleted ${id}\n`);
        }
      }),
  );
}
