/**
 * The deployment files under deploy/ are read by real tools, not only by people: nats-server accepts the cluster's
 * configuration with the shipped authorization (and says which password is missing without it), and systemd finds no
 * fault in the units.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { skipOrFail } from '../src/executors/test-support.js';
import { NATS_SERVER, natsUnavailable } from './helpers/nats-cluster.js';

const run = promisify(execFile);
const DEPLOY = new URL('../../deploy/', import.meta.url).pathname;
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';
const systemdUnavailable: string | false = existsSync(SYSTEMD_ANALYZE) ? false : skipOrFail('systemd', `${SYSTEMD_ANALYZE} is missing (Debian: systemd; scripts/setup.sh installs it)`);

async function scratch(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-deploy-files-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

describe('deploy/ files', () => {
  it('nats-server accepts deploy/nats/nats-server.conf with the authorization it includes; without the passwords it names the missing one', { skip: natsUnavailable }, async (t) => {
    const dir = await scratch(t);
    for (const name of ['nats-server.conf', 'authorization.conf']) await copyFile(join(DEPLOY, 'nats', name), join(dir, name));
    const passwords = { KINDLING_GATEWAY_PASSWORD: 'gw', KINDLING_WORKER_PASSWORD: 'wk', KINDLING_ALL_PASSWORD: 'all' };
    const valid = await run(NATS_SERVER, ['-t', '-c', join(dir, 'nats-server.conf')], { env: { PATH: process.env.PATH, ...passwords } });
    assert.match(valid.stdout + valid.stderr, /is valid/);
    await assert.rejects(run(NATS_SERVER, ['-t', '-c', join(dir, 'nats-server.conf')], { env: { PATH: process.env.PATH } }), (error: { stderr: string }) => /KINDLING_GATEWAY_PASSWORD/.test(error.stderr));
    // The roles' users are the ones the CLI options and docs name.
    const authorization = await readFile(join(dir, 'authorization.conf'), 'utf8');
    assert.match(authorization, /user: "kindling-gateway"/);
    assert.match(authorization, /user: "kindling-worker"/);
  });

  it('systemd-analyze verify finds no fault in the units (the single server and each cluster role)', { skip: systemdUnavailable }, async (t) => {
    const dir = await scratch(t);
    const units: [string, string][] = [
      ['kindling.service', 'kindling.service'],
      ['kindling@.service', 'kindling@gateway.service'],
      ['kindling@.service', 'kindling@worker.service'],
    ];
    for (const [source, target] of units) {
      // Node may live elsewhere on this machine than on the documented one: verify checks that ExecStart's program exists.
      const text = (await readFile(join(DEPLOY, 'systemd', source), 'utf8')).replaceAll('/usr/bin/node ', `${process.execPath} `);
      await writeFile(join(dir, target), text);
      const verified = await run(SYSTEMD_ANALYZE, ['verify', join(dir, target)]).catch((error: { stdout: string; stderr: string }) => ({ ...error, failed: true }));
      // Unknown keys and bad values are only warnings for systemd: any output at all is a fault here.
      const output = `${verified.stdout}${verified.stderr}`
        .split('\n')
        // Not about the unit: the container this may run in has no systemd as PID 1, and the docs URL is a local file.
        .filter((line) => line.trim() !== '' && !/System has not been booted with systemd|Failed to connect to bus|Documentation/.test(line));
      assert.deepEqual(output, [], `${target}: ${output.join('\n')}`);
      assert.ok(!('failed' in verified), `${target}: systemd-analyze verify failed`);
    }
  });
});
