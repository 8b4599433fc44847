/**
 * `--help` of every command renders: commander prints option defaults with JSON.stringify, so a default it cannot
 * serialize (a bigint) made `kindling operator --help` throw instead of helping.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Command } from 'commander';
import { buildProgram } from './index.js';

function allCommands(command: Command): Command[] {
  return [command, ...command.commands.flatMap((sub) => allCommands(sub))];
}

test('every command and subcommand renders its --help, defaults included', () => {
  const program = buildProgram({
    serve: { port: 8080, host: '127.0.0.1', dataDir: '/var/lib/kindling/data', imagesDir: '/var/lib/kindling/images', adminKey: undefined, logLevel: 'info', dockerSocketPath: '/var/run/docker.sock', version: '0.0.0' },
    client: { url: 'http://127.0.0.1:8080', apiKey: undefined },
    version: '0.0.0',
  });
  const commands = allCommands(program);
  assert.ok(commands.length > 20, `found ${commands.length} commands`);
  for (const command of commands) {
    const help = command.helpInformation();
    assert.match(help, /Usage:/, `${command.name()} --help`);
  }
  const operator = commands.find((command) => command.name() === 'operator');
  assert.match(operator!.helpInformation(), /--price-per-job-wei <n> +the price registered with the operator \(default: 0\)/);
});
