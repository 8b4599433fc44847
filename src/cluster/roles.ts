/** The settings of a server in a cluster (no NATS code here: the CLI reads them without loading the client). */
import type { ClusterSecurity } from './connection.js';

export const CLUSTER_ROLES = ['gateway', 'worker', 'all'] as const;
export type ClusterRole = (typeof CLUSTER_ROLES)[number];

export interface ClusterConfig {
  urls: string[];
  role: ClusterRole;
  /** This node's id in the registry and its subjects: 1-128 of A-Z a-z 0-9 _ - (nodeIdOf makes one from a node name). */
  nodeId: string;
  /** A worker that has not heartbeaten for this long is gone. Default 15 s (the registry's). */
  registryTtlMs?: number;
  /** A run whose worker has been silent this long fails with WORKER_LOST. Default 5 s. */
  silenceTimeoutMs?: number;
  /** TLS and credentials for NATS; unset: none (a private network). */
  security?: ClusterSecurity;
  /** Where the other gateways reach this one's API (http://host:port); unset: its listening address. */
  advertiseUrl?: string;
}

/** A node id from a node name (host names carry dots, which NATS subjects use as separators). */
export function nodeIdOf(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 128);
}

/** What GET /v1/cluster answers: a server on its own, or this node and the workers it sees. */
export type ClusterView =
  | { mode: 'single' }
  | {
      mode: 'cluster';
      role: ClusterRole;
      nodeId: string;
      nats: 'connected' | 'reconnecting' | 'closed';
      workers: { nodeId: string; role: string; capacity: number; inFlight: number; warm: string[]; startedAt: string; heartbeatAt: string }[];
    };
