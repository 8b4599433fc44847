/**
 * The cluster's connection to NATS: parsing `--cluster nats://h1:4222,nats://h2:4222` with errors that say how to fix
 * the value, and one connection that reconnects forever with jittered exponential backoff (so that a whole fleet of
 * workers does not hammer a restarted NATS node in lockstep) and reports its status for /readyz.
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';

export const DEFAULT_NATS_PORT = 4222;
/** More seed URLs than this is a mistake: clients learn the rest of the cluster from the servers they reach. */
export const MAX_CLUSTER_URLS = 16;

export class ClusterUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClusterUrlError';
  }
}

/**
 * Parses a comma-separated list of nats://host[:port] or tls://host[:port] URLs (port defaults to 4222; `tls://`
 * requires TLS, and all URLs of a list use one scheme). Returns normalised URLs; throws a ClusterUrlError naming the
 * bad entry and what is allowed.
 */
export function parseClusterUrls(text: string, maxUrls = MAX_CLUSTER_URLS): string[] {
  const entries = text
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  if (entries.length === 0) throw new ClusterUrlError('--cluster needs at least one NATS URL, e.g. --cluster nats://10.0.0.1:4222,nats://10.0.0.2:4222');
  if (entries.length > maxUrls) throw new ClusterUrlError(`--cluster takes at most ${maxUrls} URLs, got ${entries.length}; list a few seed servers, the client learns the others from them`);
  const seen = new Set<string>();
  return entries.map((entry) => {
    const portText = /^[a-z]+:\/\/[^/]*:(\d+)\/?$/i.exec(entry)?.[1];
    if (portText !== undefined && (Number(portText) < 1 || Number(portText) > 65_535)) throw new ClusterUrlError(`--cluster: "${entry}" has the port ${portText}; use 1-65535 (NATS listens on 4222 by default)`);
    let url: URL;
    try {
      url = new URL(entry);
    } catch {
      throw new ClusterUrlError(`--cluster: "${entry}" is not a URL; write nats://host:port, e.g. nats://10.0.0.1:4222`);
    }
    if (url.protocol !== 'nats:' && url.protocol !== 'tls:') throw new ClusterUrlError(`--cluster: "${entry}" has the scheme "${url.protocol.replace(/:$/, '')}"; use nats:// (or tls:// to require TLS)`);
    if (url.username !== '' || url.password !== '') throw new ClusterUrlError(`--cluster: "${entry}" carries credentials; they would show in process lists: use --cluster-user with --cluster-password-file, --cluster-token-file or --cluster-creds`);
    if ((url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') throw new ClusterUrlError(`--cluster: "${entry}" has a path, query or fragment; write only nats://host:port`);
    if (url.hostname === '') throw new ClusterUrlError(`--cluster: "${entry}" has no host; write nats://host:port`);
    // nats: is not a special scheme for URL, so an explicit port is kept as written; the range was checked above.
    const port = url.port === '' ? DEFAULT_NATS_PORT : Number(url.port);
    const normalised = `${url.protocol}//${url.hostname}:${port}`;
    if (seen.has(normalised)) throw new ClusterUrlError(`--cluster: ${normalised} is listed twice`);
    if (seen.size > 0 && ![...seen].every((other) => other.startsWith(url.protocol))) throw new ClusterUrlError(`--cluster: "${entry}" mixes nats:// and tls://; use tls:// for all (TLS is for the whole connection)`);
    seen.add(normalised);
    return normalised;
  });
}

/**
 * How a node proves itself to NATS and checks the servers (docs/cluster.md, "Securing NATS"). Secrets are values, not
 * paths: the CLI reads them from files so that they never show in process lists.
 */
export interface ClusterSecurity {
  /** TLS to the servers, required when set (also by tls:// URLs): PEM contents of the CA that signed them (else the
   * system's CAs) and of a client certificate and key (mutual TLS). */
  tls?: { ca?: string; cert?: string; key?: string };
  /** One way to authenticate: a user and password, a token, or a NATS credentials file (JWT and nkey seed). */
  auth?: { user: string; password: string } | { token: string } | { creds: string };
}

/** The nats.js options for a security setting and the URLs' scheme. */
export function securityOptions(urls: readonly string[], security: ClusterSecurity = {}): Pick<ConnectionOptions, 'servers' | 'tls' | 'user' | 'pass' | 'token' | 'authenticator'> {
  const tls = security.tls ?? (urls.some((url) => url.startsWith('tls://')) ? {} : undefined);
  const auth = security.auth;
  return {
    // nats.js takes host:port lists; whether TLS is used is the `tls` option (a tls:// URL only said it is required).
    servers: urls.map((url) => url.replace(/^tls:\/\//, 'nats://')),
    ...(tls === undefined ? {} : { tls: { ...(tls.ca === undefined ? {} : { ca: tls.ca }), ...(tls.cert === undefined ? {} : { cert: tls.cert }), ...(tls.key === undefined ? {} : { key: tls.key }) } }),
    ...(auth === undefined ? {} : 'creds' in auth ? { authenticator: credsAuthenticator(new TextEncoder().encode(auth.creds)) } : 'token' in auth ? { token: auth.token } : { user: auth.user, pass: auth.password }),
  };
}

export type ClusterConnectionStatus = 'connected' | 'reconnecting' | 'closed';

export interface ClusterConnectOptions {
  /** Shown by the NATS server's monitoring for this client (e.g. the node id). */
  name?: string;
  /** First reconnect delay; it doubles per failed attempt up to reconnectMaxMs, each delay drawn uniformly below it. */
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
  /** Time allowed for the first connection; connecting fails with an error naming the URLs after it. */
  connectTimeoutMs?: number;
  /** How often the client pings the server; two pings unanswered mean the connection is lost. Default nats.js's (2 min). */
  pingIntervalMs?: number;
  /** Status changes, for logs. */
  onStatus?: (status: ClusterConnectionStatus, detail: string) => void;
  /** TLS and credentials; none by default (a private network). */
  security?: ClusterSecurity;
  /** Where answers to this connection's requests (and its JetStream watches) arrive; default nats.js's `_INBOX`. */
  inboxPrefix?: string;
}

export interface ClusterConnection {
  readonly nc: NatsConnection;
  readonly urls: string[];
  status(): ClusterConnectionStatus;
  /** Number of reconnects since the connection was made. */
  reconnects(): number;
  /** Drains subscriptions and closes; idempotent. */
  close(): Promise<void>;
}

export const CLUSTER_CONNECT_DEFAULTS = { reconnectBaseMs: 250, reconnectMaxMs: 10_000, connectTimeoutMs: 10_000 } as const;

/**
 * Replicas for a stream or bucket the cluster creates: 3 when the servers gossip 3 or more client URLs (a cluster of 3
 * or more), else 1 (a lone server cannot hold more). With `no_advertise` the others are hidden: pass replicas then.
 */
export function defaultReplicas(nc: NatsConnection): number {
  const servers = Math.max(1, nc.info?.connect_urls?.length ?? 1);
  return servers >= 3 ? 3 : 1;
}

/** "Full jitter" backoff: a delay drawn uniformly in [0, min(max, base * 2^attempt)]. */
export function backoffDelayMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Request inboxes per role. deploy/nats/authorization.conf lets a gateway subscribe to `_INBOX_GATEWAYS.>` only and a
 * worker to `_INBOX_WORKERS.>` only, and lets workers publish to the workers' inboxes alone: so a worker's credentials
 * cannot answer a gateway's question (which gateway holds an invocation, its list) in a gateway's name.
 */
export const GATEWAY_INBOX_PREFIX = '_INBOX_GATEWAYS';
export const WORKER_INBOX_PREFIX = '_INBOX_WORKERS';

const inboxPrefixes = new WeakMap<NatsConnection, string>();

/** JetStream on a cluster connection: its watches (ordered consumers) deliver to the connection's own inboxes too. */
export function clusterJetStream(nc: NatsConnection): JetStreamClient {
  const watcherPrefix = inboxPrefixes.get(nc);
  return jetstream(nc, watcherPrefix === undefined ? {} : { watcherPrefix });
}

export function clusterJetStreamManager(nc: NatsConnection): Promise<JetStreamManager> {
  const watcherPrefix = inboxPrefixes.get(nc);
  return jetstreamManager(nc, watcherPrefix === undefined ? {} : { watcherPrefix });
}

/** Connects to a reachable URL of the list (in random order), then reconnects forever (to any server of the cluster) when it is lost. */
export async function connectCluster(urls: string[], options: ClusterConnectOptions = {}): Promise<ClusterConnection> {
  const baseMs = options.reconnectBaseMs ?? CLUSTER_CONNECT_DEFAULTS.reconnectBaseMs;
  const maxMs = options.reconnectMaxMs ?? CLUSTER_CONNECT_DEFAULTS.reconnectMaxMs;
  let attempt = 0;
  let nc: NatsConnection;
  try {
    nc = await connect({
      ...securityOptions(urls, options.security),
      name: options.name,
      ...(options.inboxPrefix === undefined ? {} : { inboxPrefix: options.inboxPrefix }),
      timeout: options.connectTimeoutMs ?? CLUSTER_CONNECT_DEFAULTS.connectTimeoutMs,
      reconnect: true,
      maxReconnectAttempts: -1,
      ...(options.pingIntervalMs === undefined ? {} : { pingInterval: options.pingIntervalMs, maxPingOut: 2 }),
      // The handler replaces reconnectTimeWait + reconnectJitter: exponential, jittered, reset once reconnected.
      reconnectDelayHandler: () => backoffDelayMs(attempt++, baseMs, maxMs),
    });
  } catch (error) {
    throw new Error(`could not connect to NATS at ${urls.join(', ')}: ${error instanceof Error ? error.message : String(error)}; check that nats-server runs there with JetStream (-js)`, { cause: error });
  }
  let status: ClusterConnectionStatus = 'connected';
  let reconnects = 0;
  const set = (next: ClusterConnectionStatus, detail: string): void => {
    if (status === 'closed') return;
    status = next;
    options.onStatus?.(next, detail);
  };
  void (async () => {
    for await (const event of nc.status()) {
      if (event.type === 'disconnect') set('reconnecting', `lost ${event.server}`);
      else if (event.type === 'reconnecting') set('reconnecting', 'reconnecting');
      else if (event.type === 'reconnect') {
        attempt = 0;
        reconnects++;
        set('connected', `reconnected to ${event.server}`);
      }
    }
  })();
  void nc.closed().then((error) => set('closed', error instanceof Error ? error.message : 'closed'));
  if (options.inboxPrefix !== undefined) inboxPrefixes.set(nc, options.inboxPrefix);
  return {
    nc,
    urls,
    status: () => status,
    reconnects: () => reconnects,
    async close() {
      if (nc.isClosed()) return;
      // Draining needs a server; without one (or when it stalls) close at once rather than wait for a reconnect.
      if (status === 'connected') await Promise.race([nc.drain().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
      if (!nc.isClosed()) await nc.close();
      await nc.closed();
    },
  };
}
