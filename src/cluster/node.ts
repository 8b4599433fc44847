/**
 * A server's part in a cluster (`kindling serve --cluster URLS --role ...`): its NATS connection, the registry, and
 * per role what it does there. A `worker` heartbeats and answers runs; a `gateway` watches the registry and sends the
 * invocations workers can take to them; `all` does both (and runs here what is placed on itself).
 */
import { createInbox, errors, nuid, type Subscription } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { GATEWAY_INBOX_PREFIX, WORKER_INBOX_PREFIX, connectCluster, type ClusterConnection, type ClusterConnectionStatus } from './connection.js';
import { Registry, type Heartbeat, type RegistryView, type WorkerEntry } from './registry.js';
import { KindlingError } from '../core/errors.js';
import { REMOTE_RUNS_DEFAULTS, RemoteRuns, type RemoteRunsOptions } from './remote-runs.js';
import { gatewayPingSubject, pingSubject } from './run-protocol.js';
import { workerInboxPrefix } from './nats-users.js';
import type { IdleUsageEvent } from '../orchestrator/handler-pools.js';
import type { ClusterConfig } from './roles.js';
import { WORKER_RUNS_DEFAULTS, WorkerRuns, type RunVersion } from './worker-runs.js';
import { ContactWatch } from './contact-watch.js';
import { SharedState, type JoinReport, type SharedStateOptions } from './shared-state.js';
import { TENANT_SLOTS_DEFAULTS, TenantSlots, openSlotsBucket, type TenantSlotsOptions } from './tenant-slots.js';
import { GatewayLease } from './gateway-lease.js';
import { InvocationOwners, type InvocationOwnersOptions } from './invocation-owners.js';
import { SharedUsage, type SharedUsageOptions, type UsageSink } from './shared-usage.js';
import { IdempotencyClaims, type IdempotencyClaimsOptions } from './idempotency-claims.js';
import { SharedArtifacts, type LocalArtifacts, type SharedArtifactsOptions } from './shared-artifacts.js';
import type { SqliteStore } from '../store/sqlite.js';
import type { SqliteTenantStore } from '../store/tenants-sqlite.js';

export interface WorkerSide {
  run: RunVersion;
  /** Executions this node runs at once. */
  capacity: number;
  /** Versions with a warm sandbox here (idle or busy), as `tenant/name@version`. */
  warm: () => string[];
  /** A gateway deleted a function: close its warm pools here. */
  deleted: (tenant: string, name: string) => void;
}

export class ClusterNode {
  private heartbeat: Heartbeat | null = null;
  private workerRuns: WorkerRuns | null = null;
  private closing: Promise<void> | null = null;
  /** Workers and `all`: fencing (contact-watch.ts). */
  private contact: ContactWatch | null = null;
  /** Set when another process took this node's id: why it is not ready. */
  private displacedBy: string | null = null;
  private sharedState: SharedState | null = null;
  private tenantSlots: TenantSlots | null = null;
  private owners: InvocationOwners | null = null;
  private sharedUsage: SharedUsage | null = null;
  private sharedArtifacts: SharedArtifacts | null = null;
  /** Gateways and `all`: answers whether a live gateway holds this node's id. */
  private gatewayPing: Subscription | null = null;
  /** Gateways and `all`: this process's hold on the node id (gateway-lease.ts). */
  private gatewayLease: GatewayLease | null = null;

  private constructor(
    readonly config: ClusterConfig,
    private readonly connection: ClusterConnection,
    private readonly registry: Registry,
    private readonly view: RegistryView | null,
    /** Gateways and `all`: where invocations go. */
    readonly router: RemoteRuns | null,
    private readonly logger: Logger,
  ) {}

  /** Connects and, for gateways, starts watching the registry; a worker starts answering with serve(). */
  static async connect(
    config: ClusterConfig,
    logger: Logger,
    hooks: Pick<RemoteRunsOptions, 'onMetered' | 'onIdleUsage' | 'onOutcome' | 'wantsOutput'> = {},
  ): Promise<ClusterNode> {
    let node: ClusterNode | null = null;
    const connection = await connectCluster(config.urls, {
      name: `kindling-${config.role}-${config.nodeId}`,
      // A silent partition (no TCP reset) is noticed within seconds and the client reconnects (nats.js: 2 min by default).
      pingIntervalMs: 3_000,
      // Answers to a gateway's questions come to the gateways' inboxes, where no worker may publish (authorization.conf).
      // A worker's own (under the workers'): with a NATS user of its own, no other worker reads them (nats-users.ts).
      inboxPrefix: config.role === 'worker' ? workerInboxPrefix(config.nodeId) : GATEWAY_INBOX_PREFIX,
      ...(config.security ? { security: config.security } : {}),
      onStatus: (status, detail) => {
        logger[status === 'connected' ? 'info' : 'warn']({ nats: status, detail }, 'cluster connection');
      },
    });
    try {
      const registry = await Registry.open(connection.nc, config.registryTtlMs === undefined ? {} : { ttlMs: config.registryTtlMs });
      const view = config.role === 'worker' ? null : await registry.watch(Date.now, (error) => logger.warn({ err: error }, 'watching the worker registry failed'));
      const router = view
        ? new RemoteRuns(connection.nc, {
            nodeId: config.nodeId,
            runsHere: config.role === 'all',
            connected: () => connection.status() === 'connected',
            reconnects: () => connection.reconnects(),
            workers: () => view.workers(),
            ...(config.silenceTimeoutMs === undefined ? {} : { silenceTimeoutMs: config.silenceTimeoutMs }),
            ...(hooks.onMetered ? { onMetered: hooks.onMetered } : {}),
            ...(hooks.onIdleUsage ? { onIdleUsage: hooks.onIdleUsage } : {}),
            ...(hooks.onOutcome ? { onOutcome: hooks.onOutcome } : {}),
            ...(hooks.wantsOutput ? { wantsOutput: hooks.wantsOutput } : {}),
          })
        : null;
      node = new ClusterNode(config, connection, registry, view, router, logger);
      // Two processes with one id would split its calls and overwrite each other's heartbeats (workers), or each other's
      // registered address and presence (gateways): refused before this server starts.
      // (The answer to the workers' question comes from a worker, which may publish to the workers' inboxes only.)
      if (config.role !== 'gateway') await node.claimNodeId(pingSubject(config.nodeId), config.role === 'worker' ? workerInboxPrefix(config.nodeId) : WORKER_INBOX_PREFIX);
      if (config.role !== 'worker') {
        await node.claimNodeId(gatewayPingSubject(config.nodeId), GATEWAY_INBOX_PREFIX);
        const identity = { nodeId: config.nodeId, instance: nuid.next(), startedAt: new Date().toISOString() };
        const answer = JSON.stringify(identity);
        node.gatewayPing = connection.nc.subscribe(gatewayPingSubject(config.nodeId), { callback: (error, msg) => void (error === null && msg.respond(answer)) });
        // Two gateways that asked in the same instant both got no answer: the lease lets one of them have the id.
        const self = node;
        node.gatewayLease = await GatewayLease.take(await openSlotsBucket(connection.nc), identity, {
          leaseMs: TENANT_SLOTS_DEFAULTS.leaseMs,
          answering: () => self.gatewaysAnswering(),
          onLost: (other) => {
            self.displacedBy = `node id ${config.nodeId} was taken by another gateway (started ${other.startedAt ?? 'at an unknown time'}); give each node its own --node-name and restart this one`;
            logger.error({ nodeId: config.nodeId, other: other.instance, otherStartedAt: other.startedAt }, 'another gateway holds this node id: this one reports not ready');
          },
          onError: (error) => logger.warn({ err: error }, "this gateway's hold on its node id could not be rewritten; tried again shortly"),
        });
      }
      node.router?.listenForIdleUsage();
      logger.info({ role: config.role, nodeId: config.nodeId, urls: config.urls }, 'joined the cluster');
      return node;
    } catch (error) {
      node?.view?.close();
      node?.router?.close();
      await node?.gatewayLease?.close().catch(() => undefined);
      node?.gatewayPing?.unsubscribe();
      await connection.close();
      throw error;
    }
  }

  /** The instances of the gateway processes that answer for this node's id within 2 s (this one's included). */
  private async gatewaysAnswering(): Promise<ReadonlySet<string>> {
    const instances = new Set<string>();
    try {
      // nats.js resolves at once and reports a failure (no responders included) from the iteration.
      for await (const msg of await this.connection.nc.requestMany(gatewayPingSubject(this.config.nodeId), '', { strategy: 'timer', maxWait: 2_000 })) {
        try {
          const instance = (JSON.parse(msg.string()) as { instance?: unknown }).instance;
          if (typeof instance === 'string') instances.add(instance);
        } catch {
          // not a gateway's answer
        }
      }
    } catch (error) {
      if (!(error instanceof errors.NoRespondersError || (error instanceof errors.RequestError && error.isNoResponders()))) throw error;
    }
    return instances;
  }

  /**
   * Gateways and `all`: makes `stores` a copy of the cluster's shared tenants, keys and functions (the first gateway's
   * own are copied into it) and keeps them so; the state returned is where this server's changes to them go.
   */
  async shareState(stores: { tenants: SqliteTenantStore; functions: SqliteStore }, options: SharedStateOptions = {}): Promise<{ state: SharedState; report: JoinReport }> {
    if (this.config.role === 'worker') throw new Error('a worker keeps no shared state');
    const joined = await SharedState.join(this.connection.nc, stores, { nodeId: this.config.nodeId, ...options });
    this.sharedState = joined.state;
    return joined;
  }

  /** Gateways and `all`: the slots of tenants' concurrency quotas, shared by every gateway. */
  async shareTenantSlots(options: TenantSlotsOptions = {}): Promise<TenantSlots> {
    if (this.config.role === 'worker') throw new Error('a worker takes no tenant slots');
    this.tenantSlots ??= await TenantSlots.open(this.connection.nc, { nodeId: this.config.nodeId, ...options });
    return this.tenantSlots;
  }

  /** Gateways and `all`: Idempotency-Keys claimed across gateways. */
  async idempotencyClaims(options: IdempotencyClaimsOptions = {}): Promise<IdempotencyClaims> {
    if (this.config.role === 'worker') throw new Error('a worker takes no invocations');
    return IdempotencyClaims.open(this.connection.nc, { nodeId: this.config.nodeId, ...options });
  }

  /** Gateways and `all`: the usage every gateway meters, followed into `sink` (see shared-usage.ts). */
  async shareUsage(sink: UsageSink, options: Omit<SharedUsageOptions, 'nodeId'> = {}): Promise<SharedUsage> {
    if (this.config.role === 'worker') throw new Error('a worker meters for its gateways');
    this.sharedUsage ??= await SharedUsage.join(this.connection.nc, sink, { ...options, nodeId: this.config.nodeId });
    return this.sharedUsage;
  }

  /** Gateways and `all`: function bundles and dependency layers in the cluster's object store (see shared-artifacts.ts). */
  async shareArtifacts(local: LocalArtifacts, options: SharedArtifactsOptions = {}): Promise<SharedArtifacts> {
    if (this.config.role === 'worker') throw new Error('a worker runs no bundle functions');
    this.sharedArtifacts ??= await SharedArtifacts.open(this.connection.nc, local, options);
    return this.sharedArtifacts;
  }

  /** A worker: fetches the bundles and layers of the versions gateways send it (see shared-artifacts.ts). */
  artifactsReader(local: Pick<LocalArtifacts, 'stores'>, options: Pick<SharedArtifactsOptions, 'onError'> = {}): SharedArtifacts {
    return SharedArtifacts.reader(this.connection.nc, local, options);
  }

  /** Gateways and `all`: tells other gateways which invocations are held here, and finds those held elsewhere. */
  invocationOwners(options: Omit<InvocationOwnersOptions, 'nodeId'>): InvocationOwners {
    if (this.config.role === 'worker') throw new Error('a worker holds no invocations');
    this.owners ??= new InvocationOwners(this.connection.nc, { connected: () => this.connection.status() === 'connected', ...options, nodeId: this.config.nodeId });
    return this.owners;
  }

  /**
   * Workers and `all`: answers runs and heartbeats into the registry (from now on gateways may place work here).
   */
  async serve(side: WorkerSide): Promise<void> {
    if (this.config.role === 'gateway' || this.workerRuns !== null) return;
    const identity = { instance: nuid.next(), startedAt: new Date().toISOString() };
    // The entry goes in first, then the subscriptions: a call a gateway sends with this instance before this process
    // listens finds no responder and is placed elsewhere (nothing ran), whereas one sent for the instance an entry
    // still named (this id's previous process) once this one listened would be ignored here and lost.
    this.heartbeat = await this.registry.heartbeat(
      () => ({ nodeId: this.config.nodeId, role: this.config.role === 'all' ? 'all' : 'worker', capacity: side.capacity, inFlight: this.workerRuns?.inFlight ?? 0, warm: side.warm(), startedAt: identity.startedAt }),
      {
        instance: identity.instance,
        onError: (error) => this.logger.warn({ err: error }, 'cluster heartbeat failed'),
        // Two processes started with one id in the same instant, both before the other answered: the later writer
        // keeps the id, this one stops taking calls and says why on /readyz.
        onConflict: (other) => {
          this.displacedBy = `node id ${this.config.nodeId} was taken by another process (started ${other.startedAt}); give each node its own --node-name and restart this one`;
          this.workerRuns?.leave();
          this.logger.error({ nodeId: this.config.nodeId, other: other.instance, otherStartedAt: other.startedAt }, 'another process heartbeats this node id: this node takes no more calls');
        },
      },
    );
    const runs = new WorkerRuns(this.connection.nc, {
      nodeId: this.config.nodeId,
      identity,
      run: side.run,
      onDeleted: side.deleted,
      onError: (error, context) => this.logger.warn({ err: error, ...context }, 'cluster run'),
    });
    this.workerRuns = runs;
    if (this.displacedBy !== null) runs.leave();
    // Fencing: a worker the server has not answered for longer than a gateway waits for word of a run (the silence
    // timeout, and one ping interval more, as a ping can be older than the last `alive` a gateway heard) aborts its
    // runs: their gateways have answered WORKER_LOST by then, and nothing it computes could reach them.
    const silenceMs = (this.config.silenceTimeoutMs ?? REMOTE_RUNS_DEFAULTS.silenceTimeoutMs) + WORKER_RUNS_DEFAULTS.aliveIntervalMs;
    this.contact = new ContactWatch({
      busy: () => runs.inFlight > 0,
      ping: () => (this.connection.status() === 'connected' ? this.connection.nc.flush() : Promise.reject(new Error('not connected'))),
      intervalMs: WORKER_RUNS_DEFAULTS.aliveIntervalMs,
      silenceMs,
      onSilent: (silentForMs) => {
        const aborted = runs.abortAll(new KindlingError('WORKER_LOST', `worker ${this.config.nodeId} heard nothing from NATS for ${silentForMs} ms; its gateways gave up on this run`));
        if (aborted > 0) this.logger.warn({ runs: aborted, silentForMs }, 'cut off from NATS: the runs of gateways were aborted');
      },
    });
    this.contact.start();
  }

  /**
   * Refuses an id a live node answers to on `subject` (workers' or gateways' question, each answered to its role's
   * inboxes only, so no worker can answer for a gateway); an id whose last holder is gone (no responders) is free at once.
   */
  private async claimNodeId(subject: string, inboxPrefix: string): Promise<void> {
    const id = this.config.nodeId;
    let answer: string | null = null;
    // Asked twice (2 s, then 4 s): a live holder on a loaded machine may be slow to answer.
    for (const timeoutMs of [2_000, 4_000]) {
      try {
        answer = (await this.connection.nc.request(subject, '', { timeout: timeoutMs, noMux: true, reply: createInbox(inboxPrefix) })).string();
        break;
      } catch (error) {
        if (error instanceof errors.NoRespondersError || (error instanceof errors.RequestError && error.isNoResponders())) return;
        if (!(error instanceof errors.TimeoutError)) throw error;
      }
    }
    if (answer === null) {
      throw new Error(`node id "${id}" may be in use: the question whether a live node holds it got no answer within 6 s (a node with that id that is stuck, or NATS not ready yet); retry, or give this node another --node-name`);
    }
    let startedAt = 'at an unknown time';
    try {
      startedAt = `at ${String((JSON.parse(answer) as { startedAt?: unknown }).startedAt)}`;
    } catch {
      // an answer that is not ours: the id is taken all the same
    }
    throw new Error(`node id "${id}" is in use by a live node (started ${startedAt}); give each node its own --node-name (default: the host name)`);
  }

  /**
   * A worker's idle usage of a sandbox it keeps for a gateway's function: sent to the gateways, which meter it. Null
   * when this node is no worker; resolves false when no gateway recorded it (the caller records it here instead).
   */
  sendIdleUsage(event: IdleUsageEvent): Promise<boolean> | null {
    return this.config.role === 'worker' && this.workerRuns !== null ? this.workerRuns.idleUsage(event) : null;
  }

  /** Why this node cannot take calls although it is connected: another process took its id. */
  displaced(): string | null {
    return this.displacedBy;
  }

  /** The workers this gateway sees (empty on a worker). */
  workers(): WorkerEntry[] {
    return this.view?.workers() ?? [];
  }

  status(): ClusterConnectionStatus {
    return this.connection.status();
  }

  /**
   * A drain's first step: leave the registry at once (gateways stop placing here) and refuse new runs; runs in flight
   * go on and end with the server's drain.
   */
  async stopAccepting(): Promise<void> {
    this.workerRuns?.stopAccepting();
    const heartbeat = this.heartbeat;
    this.heartbeat = null;
    await heartbeat?.stop({ deregister: true }).catch((error: unknown) => this.logger.warn({ err: error }, 'leaving the worker registry failed'));
  }

  /** A drain's wait: until the runs gateways sent here have ended, at most `deadlineMs`; false when some still run. */
  drain(deadlineMs: number): Promise<boolean> {
    return this.workerRuns?.idle(deadlineMs) ?? Promise.resolve(true);
  }

  /** Leaves the cluster: runs still in flight are aborted, the connection drained and closed. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.stopAccepting();
      this.contact?.stop();
      this.workerRuns?.close();
      // The aborted runs' answers (their sandboxes are being killed) go out before the connection drains.
      await this.workerRuns?.idle(2_000);
      this.router?.close();
      this.view?.close();
      // The records metered up to the drain reach the stream before the connection goes.
      await this.sharedUsage?.close().catch((error: unknown) => this.logger.warn({ err: error }, 'publishing the last usage records failed'));
      this.sharedState?.close();
      this.sharedArtifacts?.close();
      this.tenantSlots?.close();
      this.owners?.close();
      await this.gatewayLease?.close().catch(() => undefined);
      this.gatewayPing?.unsubscribe();
      await this.connection.close();
    })();
    return this.closing;
  }
}
