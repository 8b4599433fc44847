/**
 * reapVmDirs on real processes: a VM dir left by a server that died between starting the VMM and writing vm.json
 * has no record naming its pid; its VMM is found by its command line (which names the dir) and killed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { reapVmDirs } from './reap.js';
import { waitFor } from '../../../test/helpers/wait.js';

const base = mkdtempSync(join(tmpdir(), 'kindling-reap-'));
after(() => rmSync(base, { recursive: true, force: true }));

test('a VM dir without vm.json: the process naming it is killed and the dir removed; others are left alone', async () => {
  const vms = join(base, 'vms');
  const orphanDir = join(vms, 'vm-orphan');
  const otherDir = join(base, 'elsewhere');
  mkdirSync(orphanDir, { recursive: true });
  mkdirSync(otherDir, { recursive: true });
  // Stand-ins for a VMM: a process whose arguments name a socket in the dir, as qemu's -chardev path= does.
  const orphan = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)', `path=${orphanDir}/agent.sock`], { stdio: 'ignore' });
  const bystander = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)', `path=${otherDir}/agent.sock`], { stdio: 'ignore' });
  const orphanExit = new Promise((resolve) => orphan.once('exit', resolve));
  try {
    assert.equal(await reapVmDirs(vms, 'owner-1', new Set()), 1);
    await waitFor(() => orphan.exitCode !== null || orphan.signalCode !== null, { what: 'the orphan VMM killed', timeoutMs: 5_000 });
    await orphanExit;
    assert.equal(orphan.signalCode, 'SIGKILL');
    assert.equal(bystander.exitCode, null, 'a process naming another dir lives on');
    assert.equal(bystander.signalCode, null);
  } finally {
    orphan.kill('SIGKILL');
    bystander.kill('SIGKILL');
  }
});
