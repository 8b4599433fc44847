/**
 * One nonce sequence per account under concurrency: transactions are signed and handed to the node one at a time, in
 * order, each with the next nonce. Only the send is serialized (a few ms); waiting for receipts runs in parallel.
 *
 * The first send reads the account's pending transaction count. A send that fails may or may not have reached the
 * node (a timeout after the broadcast), so after any failure the next send reads the pending count again instead of
 * guessing: a gap would stall every later transaction, a reuse would replace one.
 */
export interface NonceSource {
  /** The account's transaction count including pending ones (eth_getTransactionCount with "pending"). */
  pendingCount(): Promise<number>;
}

export class NonceManager {
  private next: number | null = null;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly source: NonceSource) {}

  /** Runs `send` with the next nonce once every earlier send has finished; its result (or error) is passed on. */
  send<T>(send: (nonce: number) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      this.next ??= await this.source.pendingCount();
      const nonce = this.next;
      try {
        const result = await send(nonce);
        this.next = nonce + 1;
        return result;
      } catch (error) {
        this.next = null;
        throw error;
      }
    };
    const result = this.tail.then(run, run);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /** Forget the local count (e.g. after a reorg dropped sent transactions); the next send reads it from the node. */
  reset(): void {
    this.next = null;
  }
}
