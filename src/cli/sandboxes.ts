import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import type { SandboxInfo } from '@kindling/sdk';
import { clientFrom, guarded } from './functions.js';
import { RUNTIME_NAMES } from '../core/types.js';
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

/** One row of `kindling sandbox ls`: id, state, executor (which of several enabled hosts it), image, created. */
export const sandboxLine = (sb: SandboxInfo): string =>
  `${sb.id.padEnd(30)} ${sb.state.padEnd(10)} ${sb.executor.padEnd(8)} ${sb.image.padEnd(18)} ${sb.createdAt}${sb.usage?.cpuMs != null ? `  cpu ${Math.round(sb.usage.cpuMs)} ms` : ''}${sb.stopReason ? `  (${sb.stopReason})` : ''}`;

/**
 * A download without -r of a directory: the server says "is a directory"; the CLI says how to copy it (a tree comes
 * out as tar, which -r extracts). Anything else: undefined (the error is shown as it is).
 */
export function directoryHint(error: unknown, from: string, to: string): Error | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (code !== 'SANDBOX_PATH_INVALID' || typeof message !== 'string' || !/is a directory$/.test(message)) return undefined;
  return new Error(`${from} is a directory: copy it out with -r (kindling sandbox cp -r ${from} ${to})`);
}

/** `SANDBOX:PATH` names a file in a sandbox; anything else a local file (`-`: stdin/stdout). */
function remote(spec: string): { id: string; path: string } | null {
  const match = /^(sb_[A-Za-z0-9]+):(.+)$/.exec(spec);
  return match ? { id: match[1]!, path: match[2]! } : null;
}

/** `kindling sandbox create|list|get|exec|cp|ls|pause|resume|snapshot|fork|rm`: persistent sandboxes. */
export function registerSandboxCommands(program: Command, defaults: ClientDefaults): void {
  const sandbox = program.command('sandbox').alias('sandboxes').description('persistent sandboxes: create one, run commands in it, copy files, pause, resume, remove');

  clientOptions(
    sandbox
      .command('create')
      .description('create a sandbox; prints its id')
      .option('-r, --runtime <name>', `runtime whose image to use (${RUNTIME_NAMES.join(', ')})`)
      .option('-i, --image <image>', 'image, e.g. kindling/base')
      .option('--executor <name>', "executor hosting it: sandbox, docker, gvisor or microvm (QEMU driver) (default: the server's)")
      .option('--memory-mb <mb>', 'memory of the whole sandbox', parseNumber('--memory-mb'))
      .option('--cpus <n>', 'CPU quota in cores', parseNumber('--cpus'))
      .option('--pids <n>', 'processes at once', parseNumber('--pids'))
      .option('--disk-mb <mb>', 'size of /work and of /tmp', parseNumber('--disk-mb'))
      .option('-e, --env <KEY=VALUE>', 'environment of every command (repeatable)', collect, [])
      .option('--idle-timeout-ms <ms>', 'pause after this long without activity (default 600000)', parseNumber('--idle-timeout-ms'))
      .option('--max-lifetime-ms <ms>', 'stop and remove this long after creation (default 3600000)', parseNumber('--max-lifetime-ms'))
      .option('-m, --metadata <KEY=VALUE>', 'a label of yours (repeatable)', collect, [])
      .option('--from-snapshot <id>', "start with a snapshot's files (runtime and limits default to its own)")
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
        ...(typeof options.fromSnapshot === 'string' ? { fromSnapshot: options.fromSnapshot } : {}),
      });
      process.stdout.write(options.json ? `${JSON.stringify(sb.info, null, 2)}\n` : `${sb.id}\n`);
    }),
  );

  clientOptions(
    sandbox
      .command('list')
      .alias('ls')
      .description("list the tenant's sandboxes")
      .option('--state <state>', 'running, paused, hibernated or stopped')
      .option('-m, --metadata <KEY=VALUE>', 'only sandboxes with this metadata pair (repeatable: all must match)', collect, [])
      .option('--json', 'print JSON'),
    defaults,
  ).action(async (options: Record<string, unknown>) =>
    guarded(async () => {
      const metadata = envFrom(options.metadata as string[]);
      const list = await clientFrom(options).sandboxes.list({ ...(options.state ? { state: options.state as SandboxInfo['state'] } : {}), ...(Object.keys(metadata).length > 0 ? { metadata } : {}) });
      if (options.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
      else for (const sb of list) process.stdout.write(`${sandboxLine(sb)}\n`);
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
      .option('--background', 'start it in the background and print its command id (see `sandbox ps|logs|kill`)')
      .option('--json', 'print the result as JSON'),
    defaults,
  ).action(async (id: string, command: string[], options: Record<string, unknown>) =>
    guarded(async () => {
      const env = envFrom(options.env as string[]);
      const common = {
        ...(Object.keys(env).length > 0 ? { env } : {}),
        ...(options.workdir ? { workdir: options.workdir as string } : {}),
        ...(typeof options.timeoutMs === 'number' ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.stdin ? { stdin: (await readAll(process.stdin)).toString('utf8') } : {}),
        ...(options.autoResume === false ? { autoResume: false } : {}),
      };
      const client = clientFrom(options);
      if (options.background) {
        const handle = await client.sandboxes.start(id, command, common);
        process.stdout.write(options.json ? `${JSON.stringify(handle.info, null, 2)}\n` : `${handle.id}\n`);
        return;
      }
      // Without --json the output is printed as it is produced (the SSE foreground stream).
      const live = options.json ? {} : { onStdout: (text: string) => process.stdout.write(text), onStderr: (text: string) => process.stderr.write(text) };
      const result = await client.sandboxes.run(id, command, { ...common, ...live });
      if (options.json) {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      } else if (result.timedOut) {
        process.stderr.write(`kindling: the command timed out and was killed\n`);
      }
      process.exitCode = result.exitCode;
    }),
  );

  /* -- terminals and background commands (shell, ps, logs, kill) ------------------------------------------------- */
  clientOptions(
    sandbox
      .command('shell')
      .description("an interactive terminal in the sandbox (needs python3 in its image); the shell's exit code is kindling's")
      .argument('<id>')
      .argument('[command...]', 'a command instead of the shell (after --)')
      .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, []),
    defaults,
  ).action(async (id: string, command: string[], options: Record<string, unknown>) =>
    guarded(async () => {
      const env = envFrom(options.env as string[]);
      const tty = process.stdin.isTTY === true;
      const size = (): { cols: number; rows: number } => ({ cols: process.stdout.columns || 80, rows: process.stdout.rows || 24 });
      const pty = clientFrom(options).sandboxes.pty(id, {
        ...size(),
        ...(command.length > 0 ? { command } : {}),
        ...(Object.keys(env).length > 0 ? { env } : {}),
        onData: (data) => process.stdout.write(data),
      });
      const onInput = (chunk: Buffer): void => void pty.write(chunk).catch(() => {});
      const onResize = (): void => void pty.resize(size().cols, size().rows).catch(() => {});
      try {
        await pty.started;
        if (tty) process.stdin.setRawMode(true);
        process.stdin.on('data', onInput);
        process.stdout.on('resize', onResize);
        process.on('SIGWINCH', onResize);
        const { exitCode } = await pty.wait();
        process.exitCode = exitCode;
      } finally {
        process.stdin.off('data', onInput);
        process.stdout.off('resize', onResize);
        process.off('SIGWINCH', onResize);
        if (tty) process.stdin.setRawMode(false);
        process.stdin.pause();
        pty.kill();
      }
    }),
  );

  clientOptions(sandbox.command('ps').description("the sandbox's background commands").argument('<id>').option('--json', 'print JSON'), defaults).action(
    async (id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const commands = await clientFrom(options).sandboxes.listCommands(id);
        if (options.json) {
          process.stdout.write(`${JSON.stringify(commands, null, 2)}\n`);
          return;
        }
        for (const c of commands) {
          const status = c.state === 'running' ? 'running' : `exit ${c.exitCode}${c.killed ? ' (killed)' : c.timedOut ? ' (timed out)' : ''}`;
          process.stdout.write(`${c.id.padEnd(30)} ${String(c.pid ?? '-').padEnd(7)} ${status.padEnd(18)} ${c.command.join(' ')}\n`);
        }
      }),
  );

  clientOptions(
    sandbox
      .command('logs')
      .description("a background command's output: what was kept of a finished one; with --follow a running one's, live, until it exits")
      .argument('<id>')
      .argument('<cid>')
      .option('-f, --follow', 'follow a running command until it exits (its exit code is kindling\'s)'),
    defaults,
  ).action(async (id: string, cid: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const client = clientFrom(options);
      if (!options.follow && (await client.sandboxes.getCommand(id, cid)).state === 'running') {
        throw new Error(`${cid} is still running: add --follow to print its output so far and then live`);
      }
      const info = await client.sandboxes.commandLogs(id, cid, { onStdout: (text) => process.stdout.write(text), onStderr: (text) => process.stderr.write(text) });
      if (info.exitCode !== null) process.exitCode = info.exitCode;
    }),
  );

  // `kill` was an alias of `rm` before; it now kills one command, and says so when given a sandbox alone.
  clientOptions(sandbox.command('kill').description("kill a background command's process tree (the sandbox lives on; `rm` deletes sandboxes)").argument('<id>').argument('[cid]'), defaults).action(
    async (id: string, cid: string | undefined, options: Record<string, unknown>) =>
      guarded(async () => {
        if (cid === undefined) throw new Error(`kill takes a sandbox and a command id (see \`sandbox ps ${id}\`); to delete the sandbox: kindling sandbox rm ${id}`);
        const info = await clientFrom(options).sandboxes.killCommand(id, cid);
        process.stdout.write(`${info.id} exit ${info.exitCode}\n`);
      }),
  );
  /* -- end terminals and background commands ---------------------------------------------------------------------- */

  clientOptions(
    sandbox
      .command('cp')
      .description('copy a file or directory into or out of a sandbox: `cp ./local sb_ID:/work/x` or `cp sb_ID:/work/x ./local` (- is stdin/stdout); streamed both ways')
      .argument('<from>')
      .argument('<to>')
      .option('-r, --recursive', 'copy a directory of the sandbox out (as tar, extracted here by tar; needed for a directory); a local directory is always copied in whole'),
    defaults,
  ).action(async (from: string, to: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const [source, target] = [remote(from), remote(to)];
      const sandboxes = clientFrom(options).sandboxes;
      if ((source === null) === (target === null)) throw new Error('exactly one side of cp must be SANDBOX_ID:PATH');
      if (target !== null) {
        if (from !== '-' && (await stat(from)).isDirectory()) {
          // The directory's contents go in as one tar stream, made by the local tar and checked by the server.
          const tar = spawn('tar', ['-C', from, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
          const exited = new Promise<number>((resolve) => tar.once('close', (code) => resolve(code ?? 1)));
          const written = await sandboxes.writeTar(target.id, target.path, tar.stdout);
          if ((await exited) !== 0) throw new Error(`tar of ${from} failed; the sandbox may hold part of it`);
          process.stderr.write(`${written.entries} entries, ${written.bytes} bytes -> ${target.id}:${written.path}\n`);
          return;
        }
        const written = await sandboxes.writeFile(target.id, target.path, from === '-' ? process.stdin : createReadStream(from));
        process.stderr.write(`${written.size} bytes -> ${target.id}:${written.path}\n`);
      } else if (options.recursive) {
        if (to === '-') {
          await pipeline(Readable.fromWeb((await sandboxes.readTar(source!.id, source!.path)) as never), process.stdout);
          return;
        }
        const archive = await sandboxes.readTar(source!.id, source!.path);
        await mkdir(to, { recursive: true });
        // GNU tar does not write through links it extracted (absolute or climbing ones are made last), and keeps
        // no owners: a sandbox's archive cannot reach outside the target directory.
        const tar = spawn('tar', ['-C', to, '--no-same-owner', '-xf', '-'], { stdio: ['pipe', 'inherit', 'inherit'] });
        const exited = new Promise<number>((resolve) => tar.once('close', (code) => resolve(code ?? 1)));
        await pipeline(Readable.fromWeb(archive as never), tar.stdin);
        if ((await exited) !== 0) throw new Error(`tar failed to extract into ${to}`);
      } else {
        const data = await sandboxes.readFile(source!.id, source!.path).catch((error: unknown) => {
          throw directoryHint(error, from, to) ?? error;
        });
        if (to === '-') process.stdout.write(data);
        else await pipeline(Readable.from([data]), createWriteStream(to));
      }
    }),
  );

  clientOptions(sandbox.command('mkdir').description('make a directory in a sandbox (and its parents)').argument('<id>').argument('<path>').option('--no-parents', 'fail when the parent directory is missing'), defaults).action(
    async (id: string, path: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const made = await clientFrom(options).sandboxes.mkdir(id, path, { parents: options.parents !== false });
        process.stdout.write(`${made.path}${made.created ? '' : ' (existed)'}\n`);
      }),
  );

  clientOptions(
    sandbox
      .command('set-timeout')
      .alias('timeout')
      .description('set how long from now the sandbox lives on (extends or shortens its max lifetime), and/or its idle timeout')
      .argument('<id>')
      .argument('[ms]', 'milliseconds from now', parseNumber('ms'))
      .option('--idle-timeout-ms <ms>', 'new idle timeout (auto-pause)', parseNumber('--idle-timeout-ms')),
    defaults,
  ).action(async (id: string, ms: number | undefined, options: Record<string, unknown>) =>
    guarded(async () => {
      if (ms === undefined && typeof options.idleTimeoutMs !== 'number') throw new Error('give the milliseconds from now, --idle-timeout-ms, or both');
      const info = await clientFrom(options).sandboxes.update(id, { ...(ms === undefined ? {} : { timeoutMs: ms }), ...(typeof options.idleTimeoutMs === 'number' ? { idleTimeoutMs: options.idleTimeoutMs } : {}) });
      process.stdout.write(`${info.id} expires ${info.expiresAt}, idle timeout ${info.idleTimeoutMs} ms\n`);
    }),
  );

  clientOptions(sandbox.command('hibernate').description('release a sandbox\'s memory: processes come back on resume where the executor can save them, elsewhere the files are kept and the processes end').argument('<id>'), defaults).action(
    async (id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const info = await clientFrom(options).sandboxes.hibernate(id);
        process.stdout.write(`${info.id} ${info.state}${info.hibernation === null ? '' : info.hibernation.processesKept ? ' (processes and memory saved)' : ' (files kept; its processes ended)'}\n`);
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

  /* -- snapshots and forks ---------------------------------------------------------------------------------------- */

  clientOptions(sandbox.command('snapshot').description("snapshot a sandbox's files (prints the snapshot id); --list: its snapshots; --rm ID: delete one").argument('[id]').option('--list', "list the tenant's snapshots (of the sandbox when given)").option('--rm <snapshot>', 'delete a snapshot').option('--json', 'print JSON'), defaults).action(
    async (id: string | undefined, options: Record<string, unknown>) =>
      guarded(async () => {
        const api = clientFrom(options).sandboxes;
        if (typeof options.rm === 'string') {
          await api.deleteSnapshot(options.rm);
          process.stdout.write(`deleted ${options.rm}\n`);
        } else if (options.list) {
          const snapshots = await api.listSnapshots(id === undefined ? {} : { sandboxId: id });
          if (options.json) process.stdout.write(`${JSON.stringify(snapshots, null, 2)}\n`);
          else for (const s of snapshots) process.stdout.write(`${s.id}  ${s.sandboxId}  ${String(s.bytes).padStart(12)}  ${s.createdAt}\n`);
        } else {
          if (id === undefined) throw new Error('give the sandbox id');
          const snapshot = await api.snapshot(id);
          process.stdout.write(options.json ? `${JSON.stringify(snapshot, null, 2)}\n` : `${snapshot.id}\n`);
        }
      }),
  );

  clientOptions(sandbox.command('fork').description('snapshot a sandbox and make N sandboxes from it (prints their ids)').argument('<id>').option('-n, --count <n>', 'how many', '1').option('--json', 'print JSON'), defaults).action(
    async (id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const made = await clientFrom(options).sandboxes.fork(id, Number(options.count));
        if (options.json) process.stdout.write(`${JSON.stringify({ snapshot: made.snapshot, sandboxes: made.sandboxes.map((s) => s.info) }, null, 2)}\n`);
        else for (const sb of made.sandboxes) process.stdout.write(`${sb.id}\n`);
      }),
  );

  /* ---------------------------------------------------------------------------------------------------------------- */

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

  clientOptions(sandbox.command('rm').description('delete sandboxes: every process killed, their files gone').argument('<ids...>'), defaults).action(
    async (ids: string[], options: Record<string, unknown>) =>
      guarded(async () => {
        for (const id of ids) {
          await clientFrom(options).sandboxes.delete(id);
          process.stdout.write(`deleted ${id}\n`);
        }
      }),
  );
}
