import assert from 'node:assert/strict';
import { test } from 'node:test';
import { unknownExecutorMessage } from '../core/types.js';
import { parseExecutorList } from './serve.js';

test('--enable-executors takes a comma-separated list of executor names and refuses anything else', () => {
  assert.deepEqual(parseExecutorList('docker'), ['docker']);
  assert.deepEqual(parseExecutorList(' gvisor , microvm,'), ['gvisor', 'microvm']);
  assert.deepEqual(parseExecutorList(''), []);
  assert.throws(() => parseExecutorList('gvisor,firecracker'), /--enable-executors takes names of .*gvisor.*got "firecracker"/);
});

test('UNKNOWN_EXECUTOR says how to enable an executor, and names the executors when the name is none', () => {
  assert.match(unknownExecutorMessage('gvisor', ['sandbox', 'docker']), /not enabled on this server \(enabled: sandbox, docker\); the operator enables it with kindling serve --enable-executors gvisor/);
  assert.match(unknownExecutorMessage('firecracker', ['sandbox']), /^"firecracker" is not an executor; use one of .*microvm.*gvisor/);
});

test('--node-name defaults to the host name and refuses an empty name before anything starts', async () => {
  const { Command } = await import('commander');
  const { hostname } = await import('node:os');
  const { registerServeCommand } = await import('./serve.js');
  const program = new Command().exitOverride();
  registerServeCommand(program, { port: 8080, host: '127.0.0.1', dataDir: '/d', imagesDir: '/i', adminKey: undefined, logLevel: 'info', dockerSocketPath: '/s', version: 't' });
  const serve = program.commands.find((command) => command.name() === 'serve')!.exitOverride().configureOutput({ writeErr: () => undefined });
  assert.equal(serve.options.find((option) => option.long === '--node-name')?.defaultValue, hostname());
  await assert.rejects(program.parseAsync(['node', 'kindling', 'serve', '--node-name', '']), /--node-name must not be empty/);
});
