/**
 * `kindling cluster status --cluster URLS [--json]`: what the cluster's NATS holds about it, read without creating
 * anything: the workers that heartbeat (role, capacity, load, warm function versions) and the async queue's counts.
 * `kindling cluster nats-user ID...`: the NATS users of workers of their own, for deploy/nats/authorization.conf.
 */
import type { Command } from 'commander';
import { AsyncQueue, type QueueStatus } from '../cluster/async-queue.js';
import { GATEWAY_INBOX_PREFIX, connectCluster, parseClusterUrls, type ClusterSecurity } from '../cluster/connection.js';
import { addClusterSecurityOptions, clusterSecurity } from './cluster-security.js';
import { Registry, type WorkerEntry } from '../cluster/registry.js';
import { workerPasswordVariable, workerUserEntry } from '../cluster/nats-users.js';
import { nodeIdOf } from '../cluster/roles.js';

export interface ClusterStatus {
  nats: { urls: string[]; connectedTo: string; cluster: string | null; servers: number };
  workers: WorkerEntry[] | null;
  queue: QueueStatus | null;
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  return rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join('  ').trimEnd()).join('\n');
}

export function formatClusterStatus(status: ClusterStatus, now = Date.now()): string {
  const lines = [`NATS: connected to ${status.nats.connectedTo}${status.nats.cluster === null ? ' (a single server)' : ` (cluster ${status.nats.cluster}, ${status.nats.servers} servers)`}`, ''];
  if (status.workers === null) lines.push('Workers: none has registered yet (no registry bucket)');
  else {
    lines.push(`Workers: ${status.workers.length}`);
    if (status.workers.length > 0) {
      const rows = status.workers.map((w) => [w.nodeId, w.role, String(w.capacity), String(w.inFlight), `${Math.max(0, Math.round((now - Date.parse(w.heartbeatAt)) / 1000))} s ago`, w.warm.length === 0 ? '-' : w.warm.join(',')]);
      lines.push(table([['NODE', 'ROLE', 'CAPACITY', 'IN FLIGHT', 'HEARTBEAT', 'WARM'], ...rows]));
    }
  }
  lines.push('');
  if (status.queue === null) lines.push('Async queue: not created yet');
  else {
    const q = status.queue;
    lines.push(`Async queue ${q.stream} (R${q.replicas}): ${q.pending} pending, ${q.ackPending} ack pending (running or awaiting redelivery), ${q.redelivered} redelivered, ${q.messages} in the stream`);
  }
  return `${lines.join('\n')}\n`;
}

export function registerClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('inspect a Kindling cluster through its NATS servers');
  addClusterSecurityOptions(
    cluster
      .command('status')
      .description('workers (roles, capacity, load, warm functions) and the async queue (pending, ack pending)')
      .requiredOption('--cluster <urls>', 'NATS URLs, comma-separated (nats://host:port,... or tls://host:port,...)')
      .option('--json', 'print JSON'),
  ).action(async (options: { cluster: string; json?: boolean }) => {
      let urls: string[];
      let security: ClusterSecurity | undefined;
      try {
        urls = parseClusterUrls(options.cluster);
        security = clusterSecurity(options);
      } catch (error) {
        process.stderr.write(`kindling: ${error instanceof Error ? error.message : String(error)}\n`);
        process.exitCode = 2;
        return;
      }
      let conn;
      try {
        // With the gateways' credentials (authorization.conf): their inboxes.
        conn = await connectCluster(urls, { name: 'kindling cluster status', connectTimeoutMs: 5_000, inboxPrefix: GATEWAY_INBOX_PREFIX, ...(security ? { security } : {}) });
      } catch (error) {
        process.stderr.write(`kindling: ${error instanceof Error ? error.message : String(error)}\n`);
        process.exitCode = 2;
        return;
      }
      try {
        const registry = await Registry.inspect(conn.nc);
        const status: ClusterStatus = {
          nats: { urls, connectedTo: conn.nc.getServer(), cluster: conn.nc.info?.cluster ?? null, servers: Math.max(1, conn.nc.info?.connect_urls?.length ?? 1) },
          workers: registry === null ? null : await registry.list(),
          queue: await AsyncQueue.inspect(conn.nc),
        };
        process.stdout.write(options.json ? `${JSON.stringify(status, null, 2)}\n` : formatClusterStatus(status));
      } finally {
        await conn.close();
      }
    });
  cluster
    .command('nats-user')
    .description("print a NATS user of its own for each worker (an entry of deploy/nats/authorization.conf's users): it may take only the runs sent to that worker")
    .argument('<node-names...>', "the workers' --node-name (made node ids as serve makes them: other characters than letters, digits, - and _ become -)")
    .action((names: string[]) => {
      try {
        const nodeIds = names.map((name) => nodeIdOf(name));
        const entries = nodeIds.map((id) => workerUserEntry(id));
        const variables = nodeIds.map((id) => workerPasswordVariable(id)).join(', ');
        process.stdout.write(`# Add to the users of authorization.conf; passwords from nats-server's environment: ${variables}.\n# Each worker then starts with --cluster-user kindling-worker-<id> (ids: ${nodeIds.join(', ')}).\n${entries.join('\n')}\n`);
      } catch (error) {
        process.stderr.write(`kindling: ${error instanceof Error ? error.message : String(error)}\n`);
        process.exitCode = 2;
      }
    });
}
