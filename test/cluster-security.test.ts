/**
 * A cluster on a NATS server that requires TLS (with client certificates) and passwords, with the users and
 * permissions of deploy/nats/authorization.conf: a gateway and a worker started with the --cluster-tls-* and
 * --cluster-user options run calls as on an open server; a node without the password or without the CA is refused;
 * a worker's credentials cannot send runs to workers.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { connectCluster } from '../src/cluster/connection.js';
import { skipOrFail } from '../src/executors/test-support.js';
import { KINDLING_CLI, startNode } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const execFileAsync = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';
const unavailable = natsUnavailable || ((await sandboxUnavailableReason()) ?? false);
const opensslMissing: string | false = existsSync(OPENSSL) ? false : skipOrFail('openssl', `${OPENSSL} is missing (Debian: openssl; scripts/setup.sh installs it)`);
const AUTHORIZATION = new URL('../../deploy/nats/authorization.conf', import.meta.url).pathname;

/** A CA, a server certificate for 127.0.0.1 and a client certificate it signed, in `dir`. */
async function certificates(dir: string): Promise<void> {
  const ssl = (...args: string[]) => execFileAsync(OPENSSL, args, { cwd: dir });
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=kindling test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  for (const [name, extension] of [
    ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'],
    ['client', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    await writeFile(join(dir, `${name}.ext`), `${extension}\n`);
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=kindling ${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    await ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`);
  }
}

/** Runs the CLI to its end (bounded), with its output. */
function cli(args: string[]): Promise<{ code: number; output: string }> {
  return execFileAsync(process.execPath, [KINDLING_CLI, ...args], { timeout: 60_000 }).then(
    (done) => ({ code: 0, output: done.stdout + done.stderr }),
    (error: { code?: number; stdout?: string; stderr?: string }) => ({ code: typeof error.code === 'number' ? error.code : -1, output: `${error.stdout ?? ''}${error.stderr ?? ''}` }),
  );
}

describe('a cluster on a NATS server that requires TLS and passwords', { skip: unavailable || opensslMissing }, () => {
  it('nodes with the right certificates and users work; without them they are refused; a worker cannot send runs', { timeout: 180_000 }, async (context) => {
    const t = lifo(context);
    const dir = await mkdtemp(join(tmpdir(), 'kindling-nats-tls-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await certificates(dir);
    await writeFile(join(dir, 'gateway.pass'), 'gateway-secret\n', { mode: 0o600 });
    await writeFile(join(dir, 'worker.pass'), 'worker-secret\n', { mode: 0o600 });
    await writeFile(join(dir, 'wrong.pass'), 'not-it\n', { mode: 0o600 });
    await writeFile(join(dir, 'wk-tls.pass'), 'wk-tls-secret\n', { mode: 0o600 });
    // The worker has a NATS user of its own, as `kindling cluster nats-user` prints it, added to the shipped users.
    const ownUser = await cli(['cluster', 'nats-user', 'wk-tls']);
    assert.equal(ownUser.code, 0, ownUser.output);
    const ownEntry = ownUser.output.split('\n').filter((line) => line.startsWith('{')).join('\n');
    const nats = await startNatsCluster(t, {
      nodes: 1,
      extraConfig: [
        `tls { cert_file: "${dir}/server.pem", key_file: "${dir}/server.key", ca_file: "${dir}/ca.pem", verify: true, timeout: 5 }`,
        'KINDLING_GATEWAY_PASSWORD: "gateway-secret"',
        'KINDLING_WORKER_PASSWORD: "worker-secret"',
        'KINDLING_ALL_PASSWORD: "all-secret"',
        'KINDLING_WORKER_wk_2Dtls_PASSWORD: "wk-tls-secret"',
        (await readFile(AUTHORIZATION, 'utf8')).replace('users = [', `users = [\n    ${ownEntry}`),
      ].join('\n'),
    });
    const url = (nats.urls[0] as string).replace('nats://', 'tls://');
    const tlsArgs = ['--cluster-tls-ca', `${dir}/ca.pem`, '--cluster-tls-cert', `${dir}/client.pem`, '--cluster-tls-key', `${dir}/client.key`];
    const gatewayArgs = [...tlsArgs, '--cluster-user', 'kindling-gateway', '--cluster-password-file', `${dir}/gateway.pass`];
    const workerArgs = [...tlsArgs, '--cluster-user', 'kindling-worker-wk-tls', '--cluster-password-file', `${dir}/wk-tls.pass`];

    const gateway = await startNode(t, url, 'gateway', 'gw-tls', undefined, {}, gatewayArgs);
    const worker = await startNode(t, url, 'worker', 'wk-tls', undefined, {}, workerArgs);
    await waitFor(async () => (await fetch(`${gateway.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the gateway to see the worker' });
    const deployed = await fetch(`${gateway.url}/v1/functions/echo`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'node', handler: 'handler', code: 'exports.handler = async (event) => "got " + event' }) });
    assert.equal(deployed.status, 201, await deployed.text());
    const call = await fetch(`${gateway.url}/v1/functions/echo/invoke`, { method: 'POST', body: 'secure' });
    assert.deepEqual([call.status, await call.text(), call.headers.get('x-kindling-node')], [200, 'got secure', worker.name], 'the call went through NATS over TLS to the worker');
    // A bundle: the gateway puts it in the cluster's object store, the worker reads it from there (its user may).
    const app = join(dir, 'app');
    await mkdir(app);
    await writeFile(join(app, 'handler.py'), 'def main(body):\n    return b"bundled " + body\n');
    const bundled = await fetch(`${gateway.url}/v1/functions/bundled`, {
      method: 'PUT',
      headers: { 'content-type': 'application/x-tar', 'kindling-function-spec': JSON.stringify({ runtime: 'python', handler: 'handler.py:main' }) },
      body: new Uint8Array(execFileSync('tar', ['-c', '-f', '-', '-C', app, '.'])),
    });
    assert.equal(bundled.status, 201, await bundled.text());
    const bundledCall = await fetch(`${gateway.url}/v1/functions/bundled/invoke`, { method: 'POST', body: 'x' });
    assert.deepEqual([bundledCall.status, await bundledCall.text(), bundledCall.headers.get('x-kindling-node')], [200, 'bundled x', worker.name], "the worker fetched the bundle with its user's permissions");

    // A second gateway with the gateways' user: it reads, lists and replays (Idempotency-Key) an async invocation the
    // first one holds, so the gateways' questions and answers pass the permissions (their inboxes are their own).
    const second = await startNode(t, url, 'gateway', 'gw-tls-2', undefined, {}, gatewayArgs);
    await waitFor(async () => (await fetch(`${second.url}/v1/functions/echo`)).status === 200, { timeoutMs: 20_000, what: 'the function at the second gateway' });
    const enqueue = (at: string) => fetch(`${at}/v1/functions/echo/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true', 'idempotency-key': 'tls-1' }, body: 'later' });
    const accepted = await enqueue(gateway.url);
    assert.equal(accepted.status, 202);
    const invocationId = String(((await accepted.json()) as { invocationId: string }).invocationId);
    await waitFor(async () => ((await (await fetch(`${second.url}/v1/invocations/${invocationId}`)).json()) as { status?: string }).status === 'succeeded', { timeoutMs: 20_000, what: 'the invocation read through the second gateway' });
    const listed = (await (await fetch(`${second.url}/v1/invocations`)).json()) as { invocations: { id: string }[] };
    assert.ok(listed.invocations.some((view) => view.id === invocationId), 'listed through the second gateway');
    const replay = await enqueue(second.url);
    assert.equal(((await replay.json()) as { invocationId: string }).invocationId, invocationId, 'the same key through the second gateway names it');

    // A third gateway started with the first one's id is refused: the first answers the question whether the id is in
    // use (its user may subscribe to the gateways' ping subjects and answer in their inboxes).
    const twin = await cli(['serve', '--cluster', url, '--role', 'gateway', '--node-name', 'gw-tls', '--port', '0', '--data-dir', join(dir, 'twin'), '--prewarm', '0', '--generic-sandboxes', '0', ...gatewayArgs]);
    assert.equal(twin.code, 2, twin.output);
    assert.match(twin.output, /node id "gw-tls" is in use by a live node/);

    // `kindling cluster status` with the same options sees the worker.
    const status = await cli(['cluster', 'status', '--cluster', url, '--json', ...gatewayArgs]);
    assert.equal(status.code, 0, status.output);
    assert.deepEqual((JSON.parse(status.output) as { workers: { nodeId: string }[] }).workers.map((w) => w.nodeId), ['wk-tls']);

    // Refused: a wrong password, no client certificate, no CA (the server's certificate is not trusted), plain nats://.
    const refusals: [string, string[], RegExp][] = [
      ['a wrong password', [...tlsArgs, '--cluster-user', 'kindling-worker', '--cluster-password-file', `${dir}/wrong.pass`], /authorization violation/i],
      ['no credentials', tlsArgs, /authorization violation/i],
      ['no CA', ['--cluster-user', 'kindling-worker', '--cluster-password-file', `${dir}/worker.pass`], /certificate|self.signed|TLS/i],
    ];
    for (const [what, args, expected] of refusals) {
      const refused = await cli(['cluster', 'status', '--cluster', url, '--json', ...args]);
      assert.equal(refused.code, 2, `${what}: ${refused.output}`);
      assert.match(refused.output, expected, what);
    }
    const plain = await cli(['cluster', 'status', '--cluster', nats.urls[0] as string, '--json', ...gatewayArgs.slice(tlsArgs.length)]);
    assert.equal(plain.code, 2, `plain nats:// without TLS options: ${plain.output}`);

    /** A connection as `user` (over TLS with the client certificate), and the errors the server sends it. */
    const connectAs = async (user: string, password: string) => {
      const connection = await connectCluster([url], {
        security: { tls: { ca: await readFile(`${dir}/ca.pem`, 'utf8'), cert: await readFile(`${dir}/client.pem`, 'utf8'), key: await readFile(`${dir}/client.key`, 'utf8') }, auth: { user, password } },
      });
      t.after(() => connection.close());
      const refusals: string[] = [];
      void (async () => {
        for await (const event of connection.nc.status()) if (event.type === 'error') refusals.push(String(event.error));
      })();
      return { nc: connection.nc, errors: refusals };
    };
    // A worker's credentials cannot send runs to workers (only gateways may).
    const asWorker = await connectAs('kindling-worker', 'worker-secret');
    const errors = asWorker.errors;
    asWorker.nc.publish('kindling.workers.wk-tls.invoke', 'x');
    await asWorker.nc.flush();
    await waitFor(() => errors.some((error) => /permissions violation for publish to "kindling\.workers\.wk-tls\.invoke"/i.test(error)), { timeoutMs: 10_000, what: 'the server to refuse the publish' });
    // Nor write the gateways' shared tenants and keys (a key of its own making would let it in through any gateway).
    asWorker.nc.publish('$KV.KINDLING_STATE.k.default.key_forged', '{}');
    await asWorker.nc.flush();
    await waitFor(() => errors.some((error) => /permissions violation for publish to "\$KV\.KINDLING_STATE\.k\.default\.key_forged"/i.test(error)), { timeoutMs: 10_000, what: 'the server to refuse the write' });
    // Nor call JetStream's API for any stream but the registry's: the shared state (key hashes, code) can be neither
    // read nor deleted with a worker's credentials.
    for (const subject of ['$JS.API.STREAM.DELETE.KV_KINDLING_STATE', '$JS.API.STREAM.MSG.GET.KV_KINDLING_STATE', '$JS.API.STREAM.PURGE.KV_KINDLING_USAGE']) {
      asWorker.nc.publish(subject, '{}');
      await asWorker.nc.flush();
      const escaped = subject.replace(/[$.]/g, (char) => `\\${char}`);
      await waitFor(() => errors.some((error) => new RegExp(`permissions violation for publish to "${escaped}"`, 'i').test(error)), { timeoutMs: 10_000, what: `the server to refuse ${subject}` });
    }
    // Nor put a bundle of its own making in the object store (gateways and workers would run it).
    asWorker.nc.publish('$O.KINDLING_ARTIFACTS.M.forged', '{}');
    await asWorker.nc.flush();
    await waitFor(() => errors.some((error) => /permissions violation for publish to "\$O\.KINDLING_ARTIFACTS\.M\.forged"/i.test(error)), { timeoutMs: 10_000, what: 'the server to refuse the object' });
    // Nor forge usage records (what tenants are billed).
    asWorker.nc.publish('kindling.usage.records.gw-tls', '[]');
    await asWorker.nc.flush();
    await waitFor(() => errors.some((error) => /permissions violation for publish to "kindling\.usage\.records\.gw-tls"/i.test(error)), { timeoutMs: 10_000, what: 'the server to refuse the usage records' });
    // Nor answer a gateway's questions in a gateway's name (which gateway holds an invocation, their lists), nor read
    // the gateways' answers: request inboxes are per role.
    asWorker.nc.publish('_INBOX_GATEWAYS.forged.1', JSON.stringify({ nodeId: 'gw-tls', url: null }));
    await asWorker.nc.flush();
    await waitFor(() => errors.some((error) => /permissions violation for publish to "_INBOX_GATEWAYS\.forged\.1"/i.test(error)), { timeoutMs: 10_000, what: "the server to refuse an answer in a gateway's inbox" });
    asWorker.nc.subscribe('_INBOX_GATEWAYS.>');
    await asWorker.nc.flush().catch(() => undefined);
    await waitFor(() => errors.some((error) => /permissions violation for subscription to "_INBOX_GATEWAYS\.>"/i.test(error)), { timeoutMs: 10_000, what: "the server to refuse reading the gateways' inboxes" });

    // A worker's own user (the one wk-tls ran every call above with) may not take the runs sent to another worker,
    // nor read the answers to another worker's requests (the bundle chunks it fetched).
    const asOwnWorker = await connectAs('kindling-worker-wk-tls', 'wk-tls-secret');
    const ownErrors = asOwnWorker.errors;
    for (const subject of ['kindling.workers.wk-other.invoke', 'kindling.workers.*.invoke', '_INBOX_WORKERS.wk-other.>', '_INBOX_WORKERS.>']) {
      asOwnWorker.nc.subscribe(subject);
      await asOwnWorker.nc.flush().catch(() => undefined);
      const escaped = subject.replace(/[.*>]/g, (char) => `\\${char}`);
      await waitFor(() => ownErrors.some((error) => new RegExp(`permissions violation for subscription to "${escaped}"`, 'i').test(error)), { timeoutMs: 10_000, what: `the server to refuse ${subject} to a worker's own user` });
    }
  });
});
