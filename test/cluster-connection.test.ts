/** The NATS connection against a real nats-server: status through a server kill and restart, and close. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connectCluster, type ClusterConnectionStatus } from '../src/cluster/connection.js';
import { lifo, startNatsCluster, natsUnavailable } from './helpers/nats-cluster.js';
import { waitFor } from './helpers/wait.js';

describe('cluster connection', { skip: natsUnavailable }, () => {
  it('reports reconnecting while its server is down, connected once it is back, closed after close()', async (context) => {
    const t = lifo(context);
    const cluster = await startNatsCluster(t, { nodes: 1 });
    const seen: ClusterConnectionStatus[] = [];
    const conn = await connectCluster(cluster.urls, { name: 'test', reconnectBaseMs: 20, reconnectMaxMs: 200, onStatus: (status) => seen.push(status) });
    t.after(() => conn.close());
    assert.equal(conn.status(), 'connected');
    await cluster.kill(0, 'SIGKILL');
    await waitFor(() => conn.status() === 'reconnecting', { what: 'the connection to notice the server is gone' });
    await cluster.restart(0);
    await waitFor(() => conn.status() === 'connected', { what: 'the reconnect' });
    assert.equal(conn.reconnects(), 1);
    await conn.close();
    assert.equal(conn.status(), 'closed');
    assert.deepEqual(seen.slice(-2), ['connected', 'closed']);
  });

  it('fails to connect with an error naming the URLs when nothing listens', async () => {
    await assert.rejects(connectCluster(['nats://127.0.0.1:1'], { connectTimeoutMs: 2_000 }), /could not connect to NATS at nats:\/\/127\.0\.0\.1:1/);
  });

  it('a 3-node cluster elects a meta leader and comes up healthy', async (context) => {
    const t = lifo(context);
    const cluster = await startNatsCluster(t, { nodes: 3 });
    assert.equal(cluster.urls.length, 3);
    const conn = await connectCluster(cluster.urls);
    t.after(() => conn.close());
    // Each server learns the others through its routes: the client is told every node's client URL.
    await waitFor(() => (conn.nc.info?.connect_urls?.length ?? 0) >= 3, { what: 'the cluster to gossip its client URLs' });
  });
});
