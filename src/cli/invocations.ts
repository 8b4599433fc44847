import type { Command } from 'commander';
import type { InvocationStatus, LogEvent } from '@kindling/sdk';
import { clientFrom, guarded } from './functions.js';
import { clientOptions, type ClientDefaults } from './run.js';

function printLog(event: LogEvent, prefix: boolean): void {
  if (event.type !== 'stdout' && event.type !== 'stderr') return;
  const text = prefix ? (event.text ?? '').replace(/^(?=.)/gm, `[${event.invocationId}] `) : (event.text ?? '');
  (event.type === 'stdout' ? process.stdout : process.stderr).write(text);
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
      for await (const event of clientFrom(options).functions.logs(name, { follow: options.follow === true, tail: options.tail as number })) {
        printLog(event, options.prefix === true);
      }
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
