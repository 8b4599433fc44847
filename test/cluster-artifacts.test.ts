/**
 * Function bundles and layers across gateways (src/cluster/shared-artifacts.ts) against a real nats-server and real
 * bundle stores (GNU tar as nobody): what one gateway publishes another unpacks with its files, modes and links; an
 * object that would leave the tree is refused; objects no version needs go after the grace, and what a version needs
 * is put back. Then with processes: a bundle and a compiled go program deployed through one gateway are called through
 * another.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import { jetstream } from '@nats-io/jetstream';
import { Base64UrlPaddedCodec, Objm } from '@nats-io/obj';
import { connectCluster } from '../src/cluster/connection.js';
import { SharedArtifacts, type ArtifactKind } from '../src/cluster/shared-artifacts.js';
import { KindlingError } from '../src/core/errors.js';
import { BundleStore } from '../src/orchestrator/bundles.js';
import { startNode } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster, type CleanupOwner } from './helpers/nats-cluster.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const notRoot = process.getuid?.() === 0 ? false : 'unpacking as nobody needs root (setpriv)';

const bucketName = (): string => `T_ARTIFACTS_${Math.random().toString(36).slice(2, 10)}`;

/** A gateway's side: its own bundle and layer stores in a temp dir, the hashes its versions refer to, its artifacts. */
async function gateway(t: CleanupOwner, urls: string[], bucket: string, options: { graceMs?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-artifacts-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // Searchable by nobody, who unpacks (a server's data dir is).
  await chmod(dir, 0o755);
  const stores = { bundle: new BundleStore({ dir: join(dir, 'bundles') }), layer: new BundleStore({ dir: join(dir, 'layers') }) };
  const referenced: Record<ArtifactKind, Set<string>> = { bundle: new Set(), layer: new Set() };
  const connection = await connectCluster(urls);
  t.after(() => connection.close());
  const artifacts = await SharedArtifacts.open(connection.nc, { stores, referenced: (kind) => referenced[kind] }, { bucket, reconcileIntervalMs: 0, graceMs: options.graceMs ?? 0, confirmMs: 0 });
  t.after(async () => artifacts.close());
  // The pass that opening starts is over (with a grace of 0 it would delete what the test publishes meanwhile).
  await artifacts.reconcile();
  return { dir, stores, referenced, artifacts, nc: connection.nc };
}

async function bundleDir(t: CleanupOwner): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-artifacts-src-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'handler.py'), 'def main(event):\n    return event\n');
  await mkdir(join(dir, 'bin'));
  await writeFile(join(dir, 'bin', 'run.sh'), '#!/bin/sh\necho ran\n');
  await chmod(join(dir, 'bin', 'run.sh'), 0o755);
  await symlink('handler.py', join(dir, 'link.py'));
  return dir;
}

const tarOf = (dir: string): Buffer => execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.'], { maxBuffer: 64 * 1024 * 1024 });

const isUnavailable = (error: unknown): boolean => error instanceof KindlingError && error.code === 'CLUSTER_UNAVAILABLE';

describe('bundles and layers shared by gateways', { skip: natsUnavailable || notRoot }, () => {
  it("a bundle one gateway publishes is unpacked by another with its files, modes and links, once for concurrent calls", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket);
    const info = await a.stores.bundle.ingest(Readable.from(tarOf(await bundleDir(t))));
    a.stores.bundle.release(info.sha256);
    await a.artifacts.publish('bundle', info.sha256);

    assert.equal(await b.stores.bundle.has(info.sha256), false);
    await Promise.all([1, 2, 3].map(() => b.artifacts.ensure('bundle', info.sha256)));
    const there = b.stores.bundle.pathOf(info.sha256);
    assert.equal(await readFile(join(there, 'handler.py'), 'utf8'), 'def main(event):\n    return event\n');
    assert.equal((await stat(join(there, 'bin', 'run.sh'))).mode & 0o111, 0o111, 'the executable bit is kept');
    assert.equal(await readlink(join(there, 'link.py')), 'handler.py');
    assert.equal((await stat(join(there, 'handler.py'))).uid, 0, 'handed to root like an upload');
    // A layer is kept under its own key, like a dependency layer keyed by its lockfile.
    const layerKey = 'ab'.repeat(32);
    const layer = await a.stores.layer.ingest(Readable.from(tarOf(await bundleDir(t))), { key: layerKey });
    a.stores.layer.release(layer.sha256);
    await a.artifacts.publish('layer', layerKey);
    await b.artifacts.ensure('layer', layerKey);
    assert.equal(await b.stores.layer.has(layerKey), true);
    // Nothing of that name: a 503 that says what to do.
    await assert.rejects(b.artifacts.ensure('bundle', 'cd'.repeat(32)), (error: unknown) => isUnavailable(error) && /deploy the function again/.test((error as Error).message));
  });

  it('an object whose archive would leave the tree, or whose bytes do not match its record, is refused and leaves nothing', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const b = await gateway(t, nats.urls, bucket);
    // A forged object (anyone with a gateway's NATS credentials could write one): a tar with a "../" entry.
    const forge = await mkdtemp(join(tmpdir(), 'kindling-artifacts-forge-'));
    t.after(() => rm(forge, { recursive: true, force: true }));
    await mkdir(join(forge, 'inner'));
    await writeFile(join(forge, 'escaped.txt'), 'outside');
    const evil = execFileSync('tar', ['-c', '--absolute-names', '-f', '-', '-C', join(forge, 'inner'), '../escaped.txt']);
    assert.match(execFileSync('tar', ['-t', '-f', '-'], { input: evil }).toString(), /^\.\.\/escaped\.txt$/m);
    const sha256 = 'ef'.repeat(32);
    const store = await new Objm(b.nc).open(bucket);
    await store.putBlob({ name: `bundle.${sha256}` }, new Uint8Array(evil));
    await assert.rejects(b.artifacts.ensure('bundle', sha256), (error: unknown) => {
      assert.ok(isUnavailable(error), String(error));
      // Refused by the checks an upload goes through, naming the entry.
      assert.equal(((error as Error).cause as KindlingError).code, 'BUNDLE_INVALID');
      assert.match((error as Error).message, /\.\.\/escaped\.txt/);
      return true;
    });
    assert.equal(await b.stores.bundle.has(sha256), false);
    assert.equal(await lstat(join(b.dir, 'escaped.txt')).catch(() => null), null);
    // An object whose bytes do not match its record's SHA-256 (written around the client): refused at the end.
    const js = jetstream(b.nc);
    const good = tarOf(await bundleDir(t));
    const nuid = `forged${Math.random().toString(36).slice(2, 10)}`;
    const other = 'fe'.repeat(32);
    await js.publish(`$O.${bucket}.C.${nuid}`, new Uint8Array(good));
    await js.publish(`$O.${bucket}.M.${Base64UrlPaddedCodec.encode(`bundle.${other}`)}`, JSON.stringify({ name: `bundle.${other}`, bucket, nuid, size: good.length, chunks: 1, digest: `SHA-256=${createHash('sha256').update('something else').digest('base64url')}=`, mtime: new Date().toISOString(), deleted: false }));
    await assert.rejects(b.artifacts.ensure('bundle', other), (error: unknown) => isUnavailable(error) && /does not match its record/.test((error as Error).message));
    assert.equal(await b.stores.bundle.has(other), false, 'nothing kept of it');
    assert.equal(await lstat(join(b.dir, 'bundles', '..', 'escaped.txt')).catch(() => null), null);
  });

  it('reconcile deletes objects no version needs after the grace and puts back what a version needs', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const a = await gateway(t, nats.urls, bucket);
    const patient = await gateway(t, nats.urls, bucket, { graceMs: 3_600_000 });
    const info = await a.stores.bundle.ingest(Readable.from(tarOf(await bundleDir(t))));
    a.stores.bundle.release(info.sha256);
    await a.artifacts.publish('bundle', info.sha256);
    const store = await new Objm(a.nc).open(bucket);

    // Within the grace (a deploy whose version has not reached this copy yet): kept.
    assert.deepEqual(await patient.artifacts.reconcile(), { deleted: [], published: [] });
    assert.notEqual(await store.info(`bundle.${info.sha256}`), null);
    // Referenced: kept.
    a.referenced.bundle.add(info.sha256);
    assert.deepEqual((await a.artifacts.reconcile()).deleted, []);
    // No version refers to it and the grace is over: the first pass marks it, the next one (confirmMs later) deletes it.
    a.referenced.bundle.delete(info.sha256);
    assert.deepEqual((await a.artifacts.reconcile()).deleted, []);
    assert.deepEqual((await a.artifacts.reconcile()).deleted, [`bundle.${info.sha256}`]);
    assert.equal((await store.info(`bundle.${info.sha256}`))?.deleted ?? true, true);
    // A version refers to it again and this gateway has it on disk: put back, and another gateway can fetch it.
    a.referenced.bundle.add(info.sha256);
    assert.deepEqual((await a.artifacts.reconcile()).published, [`bundle.${info.sha256}`]);
    await patient.artifacts.ensure('bundle', info.sha256);
    assert.equal(await patient.stores.bundle.has(info.sha256), true);
  });
});

const processesUnavailable = natsUnavailable || notRoot || ((await sandboxUnavailableReason()) ?? false);

const GO_UPPER = 'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n\t"strings"\n)\n\nfunc main() {\n\tin := bufio.NewScanner(os.Stdin)\n\tfor in.Scan() {\n\t\tfmt.Println(strings.ToUpper(in.Text()))\n\t}\n}\n';

describe('serve --cluster: bundles and compiled programs across gateways', { skip: processesUnavailable }, () => {
  it('a python bundle and a go program deployed through one gateway run on a worker and through another gateway, which fetch their files; a delete removes them there', { timeout: 300_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const a = await startNode(t, natsUrl, 'gateway', 'gw-art-a');
    const b = await startNode(t, natsUrl, 'gateway', 'gw-art-b');
    const worker = await startNode(t, natsUrl, 'worker', 'wk-art');
    await waitFor(async () => (await fetch(`${b.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'B to see the worker' });

    // A bundle of two modules, deployed through A.
    const app = await mkdtemp(join(tmpdir(), 'kindling-artifacts-app-'));
    t.after(() => rm(app, { recursive: true, force: true }));
    await writeFile(join(app, 'handler.py'), 'from helper import shout\n\ndef main(body):\n    return shout(body.decode())\n');
    await writeFile(join(app, 'helper.py'), 'def shout(text):\n    return text.upper() + "!"\n');
    const deployed = await fetch(`${a.url}/v1/functions/bundled`, {
      method: 'PUT',
      headers: { 'content-type': 'application/x-tar', 'kindling-function-spec': JSON.stringify({ runtime: 'python', handler: 'handler.py:main' }) },
      body: new Uint8Array(tarOf(app)),
    });
    const view = (await deployed.json()) as { bundle?: { sha256: string } };
    assert.equal(deployed.status, 201, JSON.stringify(view));
    const sha256 = view.bundle!.sha256;
    const has = (dir: string): Promise<boolean> => stat(dir).then((found) => found.isDirectory(), () => false);
    assert.equal(await has(join(worker.dataDir, 'bundles', sha256)), false, 'the worker has not fetched it yet');
    // A handler called through B once its copy has the version: it runs on the worker, which fetched the bundle.
    await waitFor(async () => (await fetch(`${b.url}/v1/functions/bundled`)).status === 200, { timeoutMs: 10_000, what: "the function in B's copy" });
    const called = await fetch(`${b.url}/v1/functions/bundled/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hi' });
    assert.equal(called.status, 200, await called.clone().text());
    assert.equal(await called.text(), 'HI!');
    assert.equal(called.headers.get('x-kindling-node'), worker.name);
    assert.equal(await has(join(worker.dataDir, 'bundles', sha256)), true);

    // A go program compiled through A (its layer), called through B: a sync command call runs on the gateway itself.
    const go = await fetch(`${a.url}/v1/functions/upper`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'go', code: GO_UPPER }) });
    const goView = (await go.json()) as { layer?: { sha256: string } };
    assert.equal(go.status, 201, JSON.stringify(goView));
    await waitFor(async () => (await fetch(`${b.url}/v1/functions/upper`)).status === 200, { timeoutMs: 10_000, what: "the go function in B's copy" });
    const upper = await fetch(`${b.url}/v1/functions/upper/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'abc\n' });
    assert.equal(upper.status, 200, await upper.clone().text());
    assert.equal(await upper.text(), 'ABC\n');
    assert.equal(upper.headers.get('x-kindling-node'), null, 'not sent to a worker');
    const layerDir = join(b.dataDir, 'layers', goView.layer!.sha256);
    assert.equal(await has(layerDir), true);

    // Deleted through A: the worker's copy of the bundle and B's of the layer go too.
    assert.equal((await fetch(`${a.url}/v1/functions/bundled`, { method: 'DELETE' })).status, 204);
    await waitFor(async () => !(await has(join(worker.dataDir, 'bundles', sha256))), { timeoutMs: 10_000, what: "the worker's copy of the bundle to go" });
    assert.equal((await fetch(`${a.url}/v1/functions/upper`, { method: 'DELETE' })).status, 204);
    await waitFor(async () => !(await has(layerDir)), { timeoutMs: 10_000, what: "B's copy of the layer to go" });
  });
});
