import type { Command } from 'commander';
import type { InvocationStatus, LogEvent } from '@kindling/sdk';
import { clientFrom, guarded } from './functions.js';
import { clientOptions, type ClientDefaults } from './run.js';

/**
 * Prints log events. Output without a final newline (a handler's return value, a partial line) is closed with one
 * when its invocation ends or another invocation writes to the same stream, so texts of two never run together.
 */
function makeLogPrinter(prefix: boolean): (event: LogEvent) => void {
  // Per output stream: the invocation whose text last went there without a closing newline.
  const open: Record<'stdout' | 'stderr', string | null> = { stdout: null, stderr: null };
  const out = (type: 'stdout' | 'stderr'): NodeJS.WriteStream => (type === 'stdout' ? process.stdout : process.stderr);
  return (event) => {
    if (event.type === 'stdout' || event.type === 'stderr') {
      const text = prefix ? (event.text ?? '').replace(/^(?=.)/gm, `[${event.invocationId}] `) : (event.text ?? '');
      if (text.length === 0) return;
      if (open[event.type] !== null && open[event.type] !== event.invocationId) out(event.type).write('\n');
      out(event.type).write(text);
      open[event.type] = text.endsWith('\n') ? null : event.invocationId;
      return;
    }
    for (const type of ['stdout', 'stderr'] as const) {
      if (open[type] !== null && open[type] === event.invocationId) {
        out(type).write('\n');
        open[type] = null;
      }
    }
  };
}

/** `kindling logs NAME [-f]`, `kindling invocations get|list|output|wait`. */
export function registerInvocationCommands(program: Command, defaults: ClientDefaults): void {
  const logs = program
    .command('logs')
    .description("print a function's invocation logs (stdout to stdout, stderr to stderr); -f follows them live")
    .argument('<name>', 'function name')
    .option('-f, --follow', 'keep following: print every invocation as it runs')
    .option('--tail <n>', 'recent finished invocations to print first', (value) => Number(value), 10)
    .option('--prefix', 'prefix each line with the invocation id');
  clientOptions(logs, defaults).action(async (name: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const print = makeLogPrinter(options.prefix === true);
      for await (const event of clientFrom(options).functions.logs(name, { follow: options.follow === true, tail: options.tail as number })) print(event);
    }),
  );

  const invocations = program.command('invocations').description('inspect async invocations');
  clientOptions(invocations.command('get').description('show an invocation as JSON').argument('<id>'), defaults).action(async (id: string, options: Record<string, unknown>) =>
    guarded(async () => {
      process.stdout.write(`${JSON.stringify(await clientFrom(options).invocations.get(id), null, 2)}\n`);
    }),
  );
  clientOptions(
    invocations
      .command('list')
      .description('list invocations, newest first')
      .option('--function <name>', 'only this function')
      .option('--status <status>', 'queued | running | succeeded | failed')
      .option('--limit <n>', 'at most this many', (value) => Number(value), 50)
      .option('--json', 'print JSON'),
    defaults,
  ).action(async (options: Record<string, unknown>) =>
    guarded(async () => {
      const list = await clientFrom(options).invocations.list({
        limit: options.limit as number,
        ...(options.function === undefined ? {} : { function: options.function as string }),
        ...(options.status === undefined ? {} : { status: options.status as InvocationStatus }),
      });
      if (options.json) {
        process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        return;
      }
      for (const i of list) process.stdout.write(`${i.id}  ${i.function}@${i.version}  ${i.status.padEnd(9)}  ${(i.mode ?? 'async').padEnd(5)}  exit=${i.exitCode ?? '-'}  ${i.createdAt}${i.error ? `  ${i.error}` : ''}\n`);
    }),
  );
  clientOptions(invocations.command('output').description("write a finished invocation's stdout").argument('<id>'), defaults).action(async (id: string, options: Record<string, unknown>) =>
    guarded(async () => {
      process.stdout.write((await clientFrom(options).invocations.output(id)).body);
    }),
  );
  clientOptions(invocations.command('wait').description('wait until it finished, print it as JSON; exit code 1 when it failed').argument('<id>'), defaults).action(
    async (id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const done = await clientFrom(options).invocations.waitFor(id);
        process.stdout.write(`${JSON.stringify(done, null, 2)}\n`);
        if (done.status === 'failed') process.exitCode = 1;
      }),
  );
}
