/**
 * A queue worker in its own process, for tests that kill a worker with SIGKILL mid-run. argv[2] is a JSON object:
 * { urls, names, ackWaitMs, maxDeliveries, node }. It prints `running <id> <deliveries>` when a run starts and never
 * finishes one (the run waits until the process dies), so the test decides when it dies.
 */
import { AsyncQueue } from '../../src/cluster/async-queue.js';
import { connectCluster } from '../../src/cluster/connection.js';

const config = JSON.parse(process.argv[2] ?? '{}') as { urls: string[]; names: Record<string, string>; ackWaitMs: number; maxDeliveries: number; node: string };
const conn = await connectCluster(config.urls, { name: config.node });
const queue = await AsyncQueue.open(conn.nc, { names: config.names, ackWaitMs: config.ackWaitMs, maxDeliveries: config.maxDeliveries, replicas: 1 });
await queue.work(
  async (job, { deliveries, signal }) => {
    process.stdout.write(`running ${job.id} ${deliveries}\n`);
    await new Promise((resolve) => signal.addEventListener('abort', resolve));
    return { status: 'succeeded' };
  },
  { node: config.node, maxInFlight: 1, fetchExpiresMs: 1_000 },
);
process.stdout.write('ready\n');
