/**
 * Which gateway holds an invocation. Invocation records stay with the gateway that accepted the invocation; with
 * several gateways behind a load balancer, a client that polls `GET /v1/invocations/ID` (or its output or logs) lands
 * on any of them. A gateway that does not have the id asks the others over NATS (`kindling.gateways.invocations.where`,
 * which every gateway answers: yes with its HTTP address, or no), then forwards the request to the one that has it.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';

export const WHERE_SUBJECT = 'kindling.gateways.invocations.where';

export interface InvocationOwnersOptions {
  nodeId: string;
  /** Where other gateways reach this one over HTTP (null until it listens). */
  advertiseUrl: () => string | null;
  /** The tenant's invocation as GET /v1/invocations/ID shows it, when this gateway holds it (else null). */
  view: (id: string, tenant: string) => unknown;
  /**
   * Whether `url` is the address gateway `nodeId` registered (in the shared state, which only gateways may write): an
   * answer from anyone else (a compromised worker publishing to a gateway's inbox) is ignored, so a caller's key is
   * never forwarded to an address no gateway registered.
   */
  trusted: (nodeId: string, url: string) => boolean;
  onError?: (error: unknown) => void;
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

interface Question {
  id: string;
  tenant: string;
}

interface Answer {
  nodeId: string;
  url: string | null;
  view?: unknown;
}

export class InvocationOwners {
  private subscription: Subscription | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly options: InvocationOwnersOptions,
  ) {}

  /** Starts answering the other gateways. */
  serve(): void {
    if (this.subscription !== null) return;
    this.subscription = this.nc.subscribe(WHERE_SUBJECT, {
      // Whatever fails here is reported, never thrown: a throw would end the connection's reader.
      callback: (error, msg) => {
        try {
          if (error) throw error;
          const question = msg.json<Question>();
          if (typeof question.id !== 'string' || typeof question.tenant !== 'string') throw new Error('not a question');
          const url = this.options.advertiseUrl();
          const view = url === null ? null : this.options.view(question.id, question.tenant);
          const answer: Answer = view === null ? { nodeId: this.options.nodeId, url: null } : { nodeId: this.options.nodeId, url, view };
          msg.respond(JSON.stringify(answer));
        } catch (failure) {
          this.options.onError?.(failure);
        }
      },
    });
  }

  /** The other gateway that holds the tenant's invocation, or null when none answered that it does. */
  async find(id: string, tenant: string): Promise<InvocationOwner | null> {
    const answers = await this.nc.requestMany(WHERE_SUBJECT, JSON.stringify({ id, tenant } satisfies Question), {
      strategy: 'stall',
      maxWait: this.options.maxWaitMs ?? 1_000,
      stall: this.options.stallMs ?? 50,
    });
    for await (const msg of answers) {
      try {
        const answer = msg.json<Answer>();
        if (answer.url === null || answer.nodeId === this.options.nodeId) continue;
        if (!this.options.trusted(answer.nodeId, answer.url)) {
          this.options.onError?.(new Error(`an answer names ${answer.url} for gateway ${answer.nodeId}, which is not the address that gateway registered: ignored`));
          continue;
        }
        return { nodeId: answer.nodeId, url: answer.url, view: answer.view ?? null };
      } catch (error) {
        this.options.onError?.(error);
      }
    }
    return null;
  }

  close(): void {
    this.subscription?.unsubscribe();
    this.subscription = null;
  }
}
