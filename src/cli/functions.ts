import { spawn } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import type { Command } from 'commander';
import { collect, guarded, parseNumber, readAll } from './options.js';

export { guarded };
import { Kindling, KindlingError as SdkError, type FunctionBuildInfo, type FunctionInfo, type FunctionSpec } from '@kindling/sdk';
import { clientOptions, type ClientDefaults } from './run.js';



/**
 * The directory as a tar stream (GNU tar): entries sorted, owners and times zeroed, so the same content gives the same
 * bytes and the same hash (the server unpacks it once). `.git` is always left out; DIR/.kindlingignore, when present,
 * lists more patterns (one per line, tar's --exclude syntax: `*.log`, `build`, `./secret.txt`).
 */
export async function tarDirectory(dir: string): Promise<ReadableStream<Uint8Array>> {
  const found = await stat(dir).catch(() => null);
  if (found === null || !found.isDirectory()) throw new Error(`--dir ${dir}: not a directory`);
  const ignore = join(dir, '.kindlingignore');
  const hasIgnore = await stat(ignore).then(
    (s) => s.isFile(),
    () => false,
  );
  const child = spawn(
    'tar',
    ['-c', '-f', '-', '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--exclude=.git', ...(hasIgnore ? ['--exclude=./.kindlingignore', `--exclude-from=${ignore}`] : []), '-C', dir, '.'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  child.on('error', (error) => out.destroy(error));
  child.on('close', (code) => {
    // A tar that failed half-way must not look like a complete archive to the server.
    if (code === 0) out.end();
    else out.destroy(new Error(`tar of ${dir} failed: ${stderr.trim() || `exit ${code}`}`));
  });
  return Readable.toWeb(out) as ReadableStream<Uint8Array>;
}

export const clientFrom = (options: Record<string, unknown>): Kindling =>
  new Kindling({ url: options.url as string, apiKey: options.apiKey as string | undefined, timeoutMs: 0, ...(typeof options.tenant === 'string' ? { tenant: options.tenant } : {}) });

/**
 * Prints a build's log to `out` as it is written until the build ends; resolves with the build's final record. A stream
 * that ends without the build's end (the connection broke) is an error naming where to look.
 */
async function printBuildLog(client: Kindling, name: string, id: string, out: NodeJS.WritableStream): Promise<FunctionBuildInfo> {
  let last = '';
  // The connection may break mid-build (the server stopped): say so in one line (guarded prints SDK errors), not a stack.
  const lost = (why: string): SdkError =>
    new SdkError({ code: 'STREAM_INTERRUPTED', message: `the build log of ${id} ended before the build did (${why}); kindling functions builds ${name} shows its status` });
  try {
    for await (const event of client.functions.followBuildLog(name, id)) {
      if (event.type === 'log') {
        out.write(event.text);
        last = event.text;
      } else if (event.type === 'skipped') out.write(`\n[${event.bytes} bytes of the build log skipped]\n`);
      else {
        if (last !== '' && !last.endsWith('\n')) out.write('\n');
        return event.build;
      }
    }
  } catch (error) {
    if (last !== '' && !last.endsWith('\n')) out.write('\n');
    if (error instanceof SdkError) throw error;
    throw lost(error instanceof Error ? error.message : String(error));
  }
  if (last !== '' && !last.endsWith('\n')) out.write('\n');
  throw lost('the connection closed');
}

/**
 * The rest of a deploy that answered 202: the build's log live on stderr, then the version it stored, or the build's
 * error (exit 2, as for a deploy that waited).
 */
async function followDeploy(client: Kindling, name: string, id: string): Promise<FunctionInfo> {
  process.stderr.write(`building ${name}: build ${id}\n`);
  const build = await printBuildLog(client, name, id, process.stderr);
  if (build.status !== 'ready') {
    const message = `${build.error ?? 'the build failed'}\n(build ${id}: kindling functions build-log ${name} ${id})`;
    throw new SdkError({ code: 'BUILD_FAILED', message, status: 422, details: { buildId: id } });
  }
  const latest = await client.functions.get(name);
  if (build.version === undefined || latest.version === build.version) return latest;
  // Another deploy came after this one's build: show the version this deploy made.
  const version = (await client.functions.versions(name)).find((v) => v.version === build.version);
  return version === undefined ? latest : { ...latest, ...version };
}

/** `kindling deploy`, `kindling invoke`, `kindling functions list|get|delete`. */
export function registerFunctionCommands(program: Command, defaults: ClientDefaults): void {
  const deploy = program
    .command('deploy')
    .description('deploy a function (each deploy is a new version): a handler (--handler) or a program/command')
    .argument('<name>', 'function name: lower-case letters, digits, dashes')
    .argument('[command...]', 'with --image: the command and its arguments (after --)')
    .option('-r, --runtime <runtime>', 'python | node | deno | bun | go | java (handlers or programs; also python3.11, python3.13, node18, node20) or bash | rust (programs)')
    .option('-f, --file <path>', 'the source file')
    .option('-c, --code <code>', 'the source inline')
    .option('--dir <path>', 'deploy a bundle: this directory as a tar (.git and the patterns of DIR/.kindlingignore left out); with --handler FILE:FUNCTION or a command after --')
    .option('--handler <name>', 'handler style: the function that takes the body and returns the response (with --dir: FILE:FUNCTION, e.g. src/index.js:handler; java: Class.method, in a bundle FILE:[package.]Class.method)')
    .option('-i, --image <image>', 'image of a command function, e.g. kindling/base; with --runtime and --handler: a custom image built from the runtime\'s (kindling images create)')
    .option('--apt <package>', 'a Debian package the function needs on top of its runtime\'s image (repeatable; a bundle may list them in kindling.json instead)', collect, [])
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect, [])
    .option('--timeout-ms <ms>', 'wall-clock limit per invocation in milliseconds', parseNumber('--timeout-ms'))
    .option('--memory-mb <mb>', 'memory limit per sandbox in MiB', parseNumber('--memory-mb'))
    .option('--cpus <n>', 'CPU quota per sandbox in cores', parseNumber('--cpus'))
    .option('--min-warm <n>', 'warm sandboxes kept ready (handlers)', parseNumber('--min-warm'))
    .option('--max-concurrency <n>', 'invocations running at once', parseNumber('--max-concurrency'))
    .option('--executor <name>', 'docker | sandbox | microvm | gvisor')
    .option('--json', 'print the deployed function as JSON');
  clientOptions(deploy, defaults).action(async (name: string, args: string[], options: Record<string, unknown>) => {
    const spec: FunctionSpec = {};
    if (options.dir !== undefined) {
      if (options.file !== undefined || options.code !== undefined) throw new Error('--dir brings the code: drop --file/--code');
      // A handler may name a custom image built from its runtime's (--runtime and --image together).
      if (options.image !== undefined) spec.image = options.image as string;
      if (options.runtime !== undefined && (options.image === undefined || options.handler !== undefined)) spec.runtime = options.runtime as string;
      if (spec.image === undefined && spec.runtime === undefined) throw new Error('--dir needs --runtime (or --image with a command after --)');
      // A go bundle without a command is compiled at deploy and its program is the command.
      if (options.handler === undefined && args.length === 0 && !/^(go|rust)/.test(String(options.runtime))) throw new Error('--dir needs --handler FILE:FUNCTION, or a command after -- (run in the bundle\'s directory); a go or rust bundle without one is compiled at deploy');
      if (args.length > 0) spec.command = args;
    } else if (options.image !== undefined && options.handler === undefined) {
      if (args.length === 0) throw new Error('--image needs a command after --, e.g. kindling deploy up --image kindling/base -- tr a-z A-Z');
      spec.image = options.image as string;
      spec.command = args;
    } else {
      if (options.runtime === undefined) throw new Error('give --runtime with --file/--code, or --image with a command');
      spec.runtime = options.runtime as string;
      if (options.file !== undefined) spec.code = await readFile(options.file as string, 'utf8');
      else if (options.code !== undefined) spec.code = options.code as string;
      else throw new Error('--runtime needs code: --file PATH or --code CODE');
      // A handler on a custom image built from the runtime's (kindling images create NAME --from RUNTIME --apt PKG).
      if (options.image !== undefined) spec.image = options.image as string;
    }
    if (options.handler !== undefined) spec.handler = options.handler as string;
    const env: Record<string, string> = {};
    for (const pair of options.env as string[]) {
      const at = pair.indexOf('=');
      if (at <= 0) throw new Error(`--env takes KEY=VALUE, got "${pair}"`);
      env[pair.slice(0, at)] = pair.slice(at + 1);
    }
    if (Object.keys(env).length > 0) spec.env = env;
    for (const key of ['timeoutMs', 'memoryMb', 'cpus', 'minWarm', 'maxConcurrency'] as const) {
      if (options[key] !== undefined) spec[key] = options[key] as number;
    }
    if (options.executor !== undefined) spec.executor = options.executor as string;
    if ((options.apt as string[]).length > 0) spec.apt = options.apt as string[];
    await guarded(async () => {
      const client = clientFrom(options);
      // A bundle deploy does not wait for its dependency build (npm ci can take minutes): the build's log is followed
      // live (on stderr, so that --json's stdout stays JSON) and the deploy ends with it.
      // So does one that builds an image for its Debian packages (minutes for a large set) or compiles its program.
      const answer =
        options.dir === undefined
          ? await client.functions.deploy(name, spec, { requestTimeoutMs: 0, wait: false })
          : await client.functions.deployBundle(name, spec, await tarDirectory(options.dir as string), { requestTimeoutMs: 0, wait: false });
      const info = 'build' in answer && answer.status === 'building' ? await followDeploy(client, name, answer.build.id) : (answer as FunctionInfo);
      if (options.json) process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
      else process.stdout.write(`deployed ${info.name} version ${info.version} (${info.style})${info.bundle ? ` bundle sha256:${info.bundle.sha256} ${info.bundle.bytes} bytes` : ''}${layerSummary(info.layer)}${info.apt === undefined ? '' : ` on ${info.aptImage ?? '?'} (+ ${info.apt.join(' ')})`}\n`);
    });
  });

  /** What the deploy's layer is, in the deploy's one line. */
  const layerSummary = (layer: FunctionInfo['layer']): string => {
    if (layer === undefined) return '';
    if (layer.kind === 'compile') return ` program sha256:${layer.sha256} (${layer.reused ? 'compiled before' : `compiled in ${layer.buildMs} ms`})`;
    return ` dependencies sha256:${layer.sha256} (${layer.reused ? 'layer reused' : `built in ${layer.buildMs} ms`})`;
  };

  const invoke = program
    .command('invoke')
    .description('invoke a function: the data is its input, its output goes to stdout; the exit code is passed on')
    .argument('<name>', 'function name')
    .option('-d, --data <data>', 'the body: text, @FILE for a file, or - for standard input (default: empty)')
    .option('-v, --verbose', 'print the invocation id, version, duration and cold start on stderr')
    .option('--async', 'queue it and print the invocation id (follow it with kindling invocations get ID)')
    .option('--idempotency-key <key>', 'with --async: the same key for the same function never runs twice')
    .option('--callback <url>', 'with --async: the server POSTs the result there (allowed destinations only)');
  clientOptions(invoke, defaults).action(async (name: string, options: Record<string, unknown>) => {
    const data = options.data as string | undefined;
    let body: Uint8Array = new Uint8Array(0);
    if (data === '-') body = await readAll(process.stdin);
    else if (data !== undefined && data.startsWith('@')) body = await readFile(data.slice(1));
    else if (data !== undefined) body = Buffer.from(data, 'utf8');
    await guarded(async () => {
      if (options.async) {
        const queued = await clientFrom(options).functions.invokeAsync(name, body, {
          ...(options.idempotencyKey === undefined ? {} : { idempotencyKey: options.idempotencyKey as string }),
          ...(options.callback === undefined ? {} : { callbackUrl: options.callback as string }),
        });
        process.stdout.write(`${queued.invocationId}\n`);
        if (options.verbose && !queued.created) process.stderr.write('an earlier invocation with this idempotency key\n');
        return;
      }
      const result = await clientFrom(options).functions.invoke(name, body);
      process.stdout.write(result.body);
      if (options.verbose) {
        process.stderr.write(`invocation ${result.invocationId} version ${result.version} exit ${result.exitCode} ${result.durationMs} ms cold=${result.coldStart}\n`);
      }
      process.exitCode = result.exitCode;
    });
  });

  const functions = program.command('functions').description('list, show and delete deployed functions');
  clientOptions(functions.command('list').description('list functions').option('--json', 'print JSON'), defaults).action(
    async (options: Record<string, unknown>) =>
      guarded(async () => {
        const list = await clientFrom(options).functions.list();
        if (options.json) {
          process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
          return;
        }
        const rows = [['NAME', 'VERSION', 'STYLE', 'RUNTIME/IMAGE', 'BUILD', 'UPDATED'], ...list.map((f) => [f.name, String(f.version), f.style, f.runtime ?? f.image ?? '-', f.lastBuild?.status ?? '-', new Date(f.updatedAtMs).toISOString()])];
        const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
        process.stdout.write(rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n');
      }),
  );
  clientOptions(functions.command('get').description('show a function as JSON').argument('<name>'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        process.stdout.write(`${JSON.stringify(await clientFrom(options).functions.get(name), null, 2)}\n`);
      }),
  );
  clientOptions(functions.command('versions').description('list the versions kept of a function, oldest first').argument('<name>').option('--json', 'print JSON'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const versions = await clientFrom(options).functions.versions(name);
        if (options.json) {
          process.stdout.write(`${JSON.stringify(versions, null, 2)}\n`);
          return;
        }
        const rows = [['VERSION', 'STYLE', 'RUNTIME/IMAGE', 'DEPLOYED', ''], ...versions.map((v) => [String(v.version), v.style, v.runtime ?? v.image ?? '-', new Date(v.createdAtMs).toISOString(), v.latest ? 'latest' : ''])];
        const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
        process.stdout.write(rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n');
      }),
  );
  clientOptions(functions.command('builds').description('list the dependency builds of a function\'s deploys, newest first').argument('<name>').option('--json', 'print JSON'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const builds = await clientFrom(options).functions.builds(name);
        if (options.json) {
          process.stdout.write(`${JSON.stringify(builds, null, 2)}\n`);
          return;
        }
        const rows = [['BUILD', 'KIND', 'STATUS', 'STARTED', 'ERROR'], ...builds.map((b) => [b.id, b.kind, b.status, new Date(b.startedAtMs).toISOString(), (b.error ?? '').split('\n')[0]!.slice(0, 80)])];
        const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
        process.stdout.write(rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n');
      }),
  );
  clientOptions(functions.command('build-log').description('print a build\'s log (so far, while it runs; with --follow as it is written, until the build ends)').argument('<name>').argument('<build-id>').option('-f, --follow', 'follow a running build: print its log live and exit when it ends (1 if it failed)'), defaults).action(
    async (name: string, id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        if (options.follow) {
          const build = await printBuildLog(clientFrom(options), name, id, process.stdout);
          process.stderr.write(`build ${id}: ${build.status}${build.error === undefined ? '' : `: ${build.error.split('\n')[0]!}`}\n`);
          if (build.status !== 'ready') process.exitCode = 1;
          return;
        }
        const { status, log } = await clientFrom(options).functions.buildLogs(name, id);
        process.stdout.write(log.endsWith('\n') || log === '' ? log : `${log}\n`);
        process.stderr.write(`build ${id}: ${status}\n`);
      }),
  );
  clientOptions(functions.command('delete').description('delete a function, all its versions and warm sandboxes').argument('<name>'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        await clientFrom(options).functions.delete(name);
        process.stdout.write(`deleted ${name}\n`);
      }),
  );
}
