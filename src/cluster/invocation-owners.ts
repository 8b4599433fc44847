/**
 * Which gateway holds an invocation. Invocation records stay with the gateway that accepted the invocation; with
 * several gateways behind a load balancer, a client that polls `GET /v1/invocations/ID` (or its output or logs) lands
 * on any of them. A gateway that does not have the id asks the others over NATS (`kindling.gateways.invocations.where`,
 * which every gateway answers: yes with its HTTP address, or no), then forwards the request to the one that has it.
 */
import { nuid, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { KindlingError } from '../core/errors.js';

export const WHERE_SUBJECT = 'kindling.gateways.invocations.where';
/** Every gateway answers with its newest invocations of the tenant that match a filter (GET /v1/invocations anywhere). */
export const LIST_SUBJECT = 'kindling.gateways.invocations.list';

export interface InvocationOwnersOptions {
  nodeId: string;
  /** Where other gateways reach this one over HTTP (null until it listens). */
  advertiseUrl: () => string | null;
  /** The tenant's invocation as GET /v1/invocations/ID shows it, when this gateway holds it (else null). */
  view: (id: string, tenant: string) => unknown;
  /** This gateway's invocations of the tenant matching the filter, newest first, as GET /v1/invocations shows them. */
  list?: (filter: InvocationListFilter, tenant: string) => ListedInvocation[];
  /** Whether this gateway is storing that invocation right now (claimed its Idempotency-Key, not stored yet). */
  pending?: (id: string) => boolean;
  /**
   * Whether `url` is the address gateway `nodeId` registered (in the shared state, which only gateways may write): an
   * answer from anyone else (a compromised worker publishing to a gateway's inbox) is ignored, so a caller's key is
   * never forwarded to an address no gateway registered.
   */
  trusted: (nodeId: string, url: string) => boolean;
  onError?: (error: unknown) => void;
  /**
   * How many other gateways are up (their presence, see TenantSlots.othersPresent): a question waits for that many
   * answers (at most maxWaitMs), and is not asked at all when there are none. Absent: unknown, the answers are awaited
   * until none came for stallMs.
   */
  peers?: () => number;
  /** Whether this node's NATS connection is up now (a question asked while it reconnects would hear nobody). */
  connected?: () => boolean;
  /** Whether `nodeId` is a gateway that registered its address: only their answers count towards `peers`. */
  registered?: (nodeId: string) => boolean;
  /** How long to wait for the gateways' answers in all (default 1 s) and after the last one (default 50 ms). */
  maxWaitMs?: number;
  stallMs?: number;
}

export interface InvocationOwner {
  nodeId: string;
  url: string;
  /** The invocation as its gateway shows it. */
  view: unknown;
}

/** GET /v1/invocations's filter. */
export interface InvocationListFilter {
  functionName?: string;
  status?: string;
  sinceMs?: number;
  untilMs?: number;
  limit: number;
}

/** What a list needs of an invocation's view to merge the gateways' lists: newest first by createdAt (ISO), then id. */
export interface ListedInvocation {
  id: string;
  createdAt: string;
}

interface ListQuestion {
  tenant: string;
  filter: InvocationListFilter;
  /** The asking process: it does not answer itself. */
  from?: string;
}

interface ListAnswer {
  nodeId: string;
  instance?: string;
  url: string | null;
  views: ListedInvocation[];
  /** False when the views were cut to fit one NATS message: older ones of that gateway may be missing. */
  complete: boolean;
}

/** The other gateways' lists merged: their views, and the createdAt below which they may be incomplete (null: none). */
export interface ListedElsewhere<V extends ListedInvocation> {
  views: V[];
  incompleteBefore: string | null;
  /** False when fewer gateways answered than are up (the list may miss theirs). */
  complete: boolean;
}

interface Question {
  id: string;
  tenant: string;
  from?: string;
}

interface Answer {
  nodeId: string;
  /** The answering process (two processes may share a node id by mistake). */
  instance?: string;
  url: string | null;
  view?: unknown;
  /** Not stored yet, but being stored (absent: older gateways, read as false). */
  pending?: boolean;
}

/** What the gateways answered: the one that holds the invocation, else which gateways said they do not (nor are storing it). */
export interface InvocationWhereabouts {
  owner: InvocationOwner | null;
  absentAt: string[];
  /** The node ids of every other process that answered (whatever it said). */
  answeredBy: string[];
  /** Whether every other gateway up answered (unknown number: true). */
  complete: boolean;
}

export class InvocationOwners {
  private subscription: Subscription | null = null;
  private listSubscription: Subscription | null = null;
  /** This process, told apart from another that was given the same node id. */
  private readonly instance = nuid.next();

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: InvocationOwnersOptions,
  ) {}

  /** Starts answering the other gateways. */
  serve(): void {
    this.serveLists();
    if (this.subscription !== null) return;
    this.subscription = this.nc.subscribe(WHERE_SUBJECT, {
      // Whatever fails here is reported, never thrown: a throw would end the connection's reader.
      callback: (error, msg) => {
        try {
          if (error) throw error;
          const question = msg.json<Question>();
          if (typeof question.id !== 'string' || typeof question.tenant !== 'string') throw new Error('not a question');
          if (question.from === this.instance) return;
          const url = this.options.advertiseUrl();
          const view = url === null ? null : this.options.view(question.id, question.tenant);
          const me = { nodeId: this.options.nodeId, instance: this.instance };
          const answer: Answer = view !== null ? { ...me, url, view } : { ...me, url: null, ...(this.options.pending?.(question.id) ? { pending: true } : {}) };
          msg.respond(JSON.stringify(answer));
        } catch (failure) {
          this.options.onError?.(failure);
        }
      },
    });
  }

  /** Starts answering the other gateways' lists (GET /v1/invocations at any gateway shows every gateway's). */
  private serveLists(): void {
    const list = this.options.list;
    if (list === undefined || this.listSubscription !== null) return;
    this.listSubscription = this.nc.subscribe(LIST_SUBJECT, {
      callback: (error, msg) => {
        try {
          if (error) throw error;
          const question = msg.json<ListQuestion>();
          if (typeof question.tenant !== 'string' || typeof question.filter !== 'object' || question.filter === null) throw new Error('not a list question');
          if (question.from === this.instance) return;
          const limit = Math.min(1000, Math.max(1, Math.floor(Number(question.filter.limit)) || 100));
          const url = this.options.advertiseUrl();
          const views = url === null ? [] : list({ ...question.filter, limit }, question.tenant);
          // One NATS message holds the answer: views past its size are left out (and the answer says so).
          const maxBytes = (this.nc.info?.max_payload ?? 1024 * 1024) - 4096;
          let answer: ListAnswer = { nodeId: this.options.nodeId, instance: this.instance, url, views, complete: true };
          let text = JSON.stringify(answer);
          while (Buffer.byteLength(text) > maxBytes && answer.views.length > 0) {
            answer = { ...answer, views: answer.views.slice(0, Math.floor(answer.views.length / 2)), complete: false };
            text = JSON.stringify(answer);
          }
          msg.respond(text);
        } catch (failure) {
          this.options.onError?.(failure);
        }
      },
    });
  }

  /**
   * The other gateways' invocations of the tenant matching the filter, newest first, at most `limit` of each. Answers
   * from addresses no gateway registered are ignored, as for `locate`.
   */
  async listElsewhere<V extends ListedInvocation>(filter: InvocationListFilter, tenant: string): Promise<ListedElsewhere<V>> {
    const answers = await this.ask(LIST_SUBJECT, JSON.stringify({ tenant, filter, from: this.instance } satisfies ListQuestion));
    const views: V[] = [];
    const answered = new Set<string>();
    let incompleteBefore: string | null = null;
    for await (const msg of answers) {
      try {
        const answer = msg.json<ListAnswer>();
        if (this.isMine(answer) || answer.url === null || !Array.isArray(answer.views)) continue;
        if (!this.options.trusted(answer.nodeId, answer.url)) {
          this.options.onError?.(new Error(`a list answer names ${answer.url} for gateway ${answer.nodeId}, which is not the address that gateway registered: ignored`));
          continue;
        }
        views.push(...(answer.views as V[]));
        const oldest = answer.views.at(-1)?.createdAt;
        if (!answer.complete && oldest !== undefined && (incompleteBefore === null || oldest > incompleteBefore)) incompleteBefore = oldest;
        answered.add(`${answer.nodeId}/${answer.instance ?? ''}`);
        if (this.enough(answered)) break;
      } catch (error) {
        this.options.onError?.(error);
      }
    }
    return { views, incompleteBefore, complete: this.options.peers === undefined || this.enough(answered) };
  }

  /**
   * The other gateway that holds the tenant's invocation, or null when every gateway up answered that it does not.
   * 503 CLUSTER_UNAVAILABLE when one that may hold it did not answer (a 404 then could be false).
   */
  async find(id: string, tenant: string): Promise<InvocationOwner | null> {
    const where = await this.locate(id, tenant);
    if (where.owner === null && !where.complete) throw unavailable(new Error(`not every gateway answered within ${this.options.maxWaitMs ?? 1_000} ms`));
    return where.owner;
  }

  /** As find, and which gateways answered that they neither hold nor are storing it. */
  async locate(id: string, tenant: string): Promise<InvocationWhereabouts> {
    const answers = await this.ask(WHERE_SUBJECT, JSON.stringify({ id, tenant, from: this.instance } satisfies Question));
    const absentAt: string[] = [];
    const answeredBy: string[] = [];
    const answered = new Set<string>();
    for await (const msg of answers) {
      try {
        const answer = msg.json<Answer>();
        if (this.isMine(answer)) continue;
        answeredBy.push(answer.nodeId);
        answered.add(`${answer.nodeId}/${answer.instance ?? ''}`);
        if (answer.url === null) {
          if (answer.pending !== true) absentAt.push(answer.nodeId);
          if (this.enough(answered)) break;
          continue;
        }
        if (!this.options.trusted(answer.nodeId, answer.url)) {
          this.options.onError?.(new Error(`an answer names ${answer.url} for gateway ${answer.nodeId}, which is not the address that gateway registered: ignored`));
          continue;
        }
        return { owner: { nodeId: answer.nodeId, url: answer.url, view: answer.view ?? null }, absentAt, answeredBy, complete: true };
      } catch (error) {
        this.options.onError?.(error);
      }
    }
    return { owner: null, absentAt, answeredBy, complete: this.options.peers === undefined || this.enough(answered) };
  }

  /** Whether every other gateway up has answered: the processes (`node/instance`) of registered gateways in `answered` are as many. */
  private enough(answered: ReadonlySet<string>): boolean {
    const peers = this.options.peers?.();
    if (peers === undefined) return false;
    let registered = 0;
    for (const process of answered) if (this.options.registered?.(process.slice(0, process.lastIndexOf('/'))) ?? true) registered++;
    return registered >= peers;
  }

  /** An answer of this process (gateways that predate `from` answer their own questions too). */
  private isMine(answer: { nodeId: string; instance?: string }): boolean {
    return answer.instance === undefined ? answer.nodeId === this.options.nodeId : answer.instance === this.instance;
  }

  /**
   * Asks every other gateway: not at all when none is up; else the answers until maxWaitMs (the caller stops at the
   * last gateway's, see enough) or, the number of gateways unknown, until none came for stallMs. NATS failing is 503
   * CLUSTER_UNAVAILABLE.
   */
  private async ask(subject: string, question: string): Promise<AsyncIterable<Msg>> {
    if (this.options.connected?.() === false) throw unavailable(new Error('the connection to NATS is down (reconnecting)'));
    const peers = this.options.peers?.();
    if (peers === 0) return (async function* (): AsyncGenerator<Msg> {})();
    const maxWait = this.options.maxWaitMs ?? 1_000;
    try {
      // With the number known the caller stops once that many gateways answered (answers from anyone else, e.g. a
      // forger, must not count), else the iteration ends at maxWait.
      const answers = await this.nc.requestMany(subject, question, peers === undefined ? { strategy: 'stall', maxWait, stall: this.options.stallMs ?? 50 } : { strategy: 'timer', maxWait });
      // Errors while the answers arrive (the connection lost) end the iteration as a failure too.
      return (async function* () {
        try {
          yield* answers;
        } catch (error) {
          throw unavailable(error);
        }
      })();
    } catch (error) {
      throw unavailable(error);
    }
  }

  close(): void {
    this.subscription?.unsubscribe();
    this.subscription = null;
    this.listSubscription?.unsubscribe();
    this.listSubscription = null;
  }
}

function unavailable(error: unknown): KindlingError {
  if (error instanceof KindlingError) return error;
  return new KindlingError('CLUSTER_UNAVAILABLE', `the other gateways could not be asked over NATS: ${error instanceof Error ? error.message : String(error)}; retry shortly`, { retryAfterSeconds: 1 });
}
