import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { after, test } from 'node:test';
import { BundleStore } from './bundles.js';
import { DependencyBuilder } from './builds.js';
import type { ExecutionService } from './execution-service.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

test('a compiled program is reused for the same tenant and source, never across tenants, and the build has no network', async () => {
  const work = await mkdtemp(join(tmpdir(), 'kindling-builds-'));
  dirs.push(work);
  // The layer store's ancestors must be searchable by the unprivileged uid that unpacks (bundles.ts).
  await chmod(work, 0o755);
  await writeFile(join(work, 'main'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  const program = execFileSync('tar', ['-cf', '-', '-C', work, 'main']);
  const builds: { network: unknown; stdin: unknown; command: unknown; roBinds: unknown }[] = [];
  // The build sandbox, faked: what a real one prints on stdout is the tar of /tmp/out.
  const executionService = {
    executeRaw: async (request: { network?: string; command?: string[] }, options: { roBinds?: unknown; io: { stdin: unknown; stdout: { sink: Writable } } }) => {
      builds.push({ network: request.network, stdin: options.io.stdin, command: request.command, roBinds: options.roBinds });
      await new Promise<void>((resolve) => options.io.stdout.sink.write(program, () => resolve()));
      return { result: { exitCode: 0, timedOut: false, oomKilled: false }, stdout: Buffer.alloc(0), stderr: Buffer.from('') };
    },
  } as unknown as ExecutionService;
  const layers = new BundleStore({ dir: join(work, 'layers') });
  const builder = new DependencyBuilder({ executionService, layers, npmDir: '/nonexistent' });
  const code = 'package main\nfunc main() {}\n';
  const first = await builder.compiledFor({ code }, 'go', { name: 'acme', caps: {} });
  const again = await builder.compiledFor({ code }, 'go', { name: 'acme', caps: {} });
  const other = await builder.compiledFor({ code }, 'go', { name: 'other', caps: {} });
  assert.deepEqual([first.layer.reused, again.layer.reused, other.layer.reused], [false, true, false]);
  assert.equal(again.layer.sha256, first.layer.sha256);
  assert.notEqual(other.layer.sha256, first.layer.sha256);
  assert.equal(first.layer.kind, 'compile');
  assert.equal(builds.length, 2);
  assert.equal(builds[0]!.network, 'none');
  assert.deepEqual(builds[0]!.stdin, { kind: 'bytes', bytes: Buffer.from(code) });
  assert.match(String((builds[0]!.command as string[])[2]), /go build -o \/tmp\/out\/main main\.go/);
  // A handler is compiled with the agent, under a key of its own.
  const handler = await builder.compiledFor({ code: 'package main\nfunc Handle(b []byte) []byte { return b }\n', handler: 'Handle' }, 'go', { name: 'acme', caps: {} });
  assert.equal(handler.layer.reused, false);
  assert.match(String((builds[2]!.command as string[])[2]), /kindlingHandler any = Handle/);
  // Nothing of the host is bound into a code build: the agent travels in the script (the sandbox's uid may not reach
  // the server's checkout).
  assert.deepEqual(builds.map((b) => b.roBinds), [undefined, undefined, undefined]);
  assert.match(String((builds[2]!.command as string[])[2]), /base64 -d > kindling_agent\.go/);
});
