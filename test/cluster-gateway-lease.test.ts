/**
 * A gateway's hold on its node id (src/cluster/gateway-lease.ts) against a real nats-server: of two processes that
 * take one id, one gets it and the other is refused while a live gateway answers for it; a key left by a gateway
 * that is gone is taken over; the holder whose key another process took over learns it at its next rewrite; a
 * graceful close frees the id at once. And two `kindling serve --role gateway` processes started with one id at once:
 * exactly one serves (which of the two checks refuses the other depends on timing the test cannot force).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { nuid } from '@nats-io/transport-node';
import { connectCluster } from '../src/cluster/connection.js';
import { GatewayIdInUseError, GatewayLease, type GatewayIdentity } from '../src/cluster/gateway-lease.js';
import { openSlotsBucket } from '../src/cluster/tenant-slots.js';
import { KINDLING_CLI, stop } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';
import { IMAGES_DIR } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const identity = (nodeId: string): GatewayIdentity => ({ nodeId, instance: nuid.next(), startedAt: new Date().toISOString() });

describe("a gateway's hold on its node id", { skip: natsUnavailable }, () => {
  it('one process takes an id; another is refused while the holder lives, takes it over when it is gone; the displaced holder learns it; a close frees it', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const connection = await connectCluster(nats.urls);
    t.after(() => connection.close());
    const kv = await openSlotsBucket(connection.nc, { bucket: `T_LEASE_${nuid.next()}`, leaseMs: 3_000 });
    const lost: string[] = [];
    const first = identity('gw-x');
    const holder = await GatewayLease.take(kv, first, { leaseMs: 3_000, answering: async () => new Set([first.instance]), onLost: (other) => lost.push(String(other.instance)) });
    t.after(() => holder.close());
    assert.equal(JSON.parse((await kv.get('_gateway.gw-x'))!.string()).instance, first.instance);

    // The holder answers for the id: a second process is refused, and the key stays the holder's.
    const late = identity('gw-x');
    await assert.rejects(GatewayLease.take(kv, late, { leaseMs: 3_000, answering: async () => new Set([first.instance, late.instance]), onLost: () => {} }), GatewayIdInUseError);
    assert.equal(JSON.parse((await kv.get('_gateway.gw-x'))!.string()).instance, first.instance);

    // Nobody answers for it (its holder died, say): the key is taken over, and the old holder learns it at its next
    // rewrite (every leaseMs/3).
    const second = identity('gw-x');
    // (The holder, alive here, may rewrite its key between the taker's read and its compare-and-set: asked again then.)
    let taker: GatewayLease | null = null;
    for (let attempt = 0; taker === null; attempt++) {
      taker = await GatewayLease.take(kv, second, { leaseMs: 3_000, answering: async () => new Set([second.instance]), onLost: () => {} }).catch((error: unknown) => {
        if (error instanceof GatewayIdInUseError && attempt < 5) return null;
        throw error;
      });
    }
    t.after(() => taker!.close());
    await waitFor(() => lost.length > 0, { timeoutMs: 10_000, what: 'the displaced holder to learn it lost the id' });
    assert.deepEqual(lost, [second.instance]);
    // The taker keeps it (rewrites go on past the bucket's max age), and the displaced holder's close leaves it alone.
    await holder.close();
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    assert.equal(JSON.parse((await kv.get('_gateway.gw-x'))!.string()).instance, second.instance, 'the taker rewrote its key past the max age; the displaced close did not delete it');
    // A graceful close frees the id at once: the next process takes it with a plain create.
    await taker!.close();
    const third = await GatewayLease.take(kv, identity('gw-x'), { leaseMs: 3_000, answering: async () => { throw new Error('not asked: the key was free'); }, onLost: () => {} });
    await third.close();

    // Two processes taking over a dead holder's id at once both answer for it, neither is the holder: one gets it.
    await kv.put('_gateway.gw-y', JSON.stringify({ nodeId: 'gw-y', instance: 'long-gone', startedAt: '2026-01-01T00:00:00Z' }));
    const [a, b] = [identity('gw-y'), identity('gw-y')];
    const both = new Set([a.instance, b.instance]);
    const outcomes = await Promise.allSettled([a, b].map((who) => GatewayLease.take(kv, who, { leaseMs: 3_000, answering: async () => both, onLost: () => {} })));
    const won = outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
    for (const lease of won) t.after(() => lease.close());
    assert.equal(won.length, 1, 'exactly one of the two took the dead holder\'s id');
    // The other is refused: the compare-and-set lost, or (reading the key after the winner wrote it) a live holder.
    assert.ok(outcomes.some((outcome) => outcome.status === 'rejected' && outcome.reason instanceof GatewayIdInUseError));
  });

  it('two gateways started with one node id at once: exactly one serves, the other exits saying the id is in use (whichever check catches it: the question or the lease)', { timeout: 120_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const start = async (): Promise<{ code: number | null; output: string; listening: boolean }> => {
      const dataDir = await mkdtemp(join(tmpdir(), 'kindling-gateway-twin-'));
      t.after(() => rm(dataDir, { recursive: true, force: true }));
      const child = spawn(process.execPath, [KINDLING_CLI, 'serve', '--cluster', nats.urls[0]!, '--role', 'gateway', '--node-name', 'gw-same', '--port', '0', '--data-dir', dataDir, '--images-dir', IMAGES_DIR, '--prewarm', '0', '--generic-sandboxes', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
      t.after(() => stop(child, 'SIGTERM'));
      return new Promise((resolve) => {
        let output = '';
        const read = (chunk: Buffer): void => {
          output += String(chunk);
          if (output.includes('Kindling is listening')) resolve({ code: null, output, listening: true });
        };
        child.stdout.on('data', read);
        child.stderr.on('data', read);
        child.once('exit', (code) => resolve({ code, output, listening: false }));
      });
    };
    const outcomes = await Promise.all([start(), start()]);
    const serving = outcomes.filter((outcome) => outcome.listening);
    const refused = outcomes.filter((outcome) => !outcome.listening);
    assert.equal(serving.length, 1, outcomes.map((outcome) => outcome.output.slice(-400)).join('\n---\n'));
    assert.equal(refused[0]!.code, 2);
    assert.match(refused[0]!.output, /node id "gw-same" (is in use by a live|is in use by a live gateway|was just taken)/);
  });
});
