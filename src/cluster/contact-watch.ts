/**
 * A worker's own check that NATS still hears it while it runs work for gateways. A silent partition (packets dropped,
 * no reset) leaves the client believing it is connected until two of its own pings go unanswered (some 6 to 9 s with
 * a 3 s ping interval), while a gateway gives up on the run after its silence timeout (5 s). Pinging the server once a
 * second while runs are in flight lets the worker fence itself soon after its gateways give up, instead of seconds
 * later, so the run they send elsewhere overlaps the abandoned one for about a second instead of several.
 */
export interface ContactWatchOptions {
  /** Whether there is anything to protect (runs in flight). While idle nothing is sent and the silence does not count. */
  busy: () => boolean;
  /** One round trip to the server; settles when it answered (or failed). */
  ping: () => Promise<void>;
  /** Time between pings while busy. */
  intervalMs: number;
  /** Time without an answer after which `onSilent` is called. */
  silenceMs: number;
  /** The server has not answered for `silentForMs`: abort the runs. Called once per silence. */
  onSilent: (silentForMs: number) => void;
  now?: () => number;
}

export class ContactWatch {
  private readonly now: () => number;
  /** When the server last answered, or when the node was last idle (a run can only arrive through the server). */
  private lastContactMs: number;
  private lastTickMs: number | null = null;
  private pinging = false;
  private confirming = false;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: ContactWatchOptions) {
    this.now = options.now ?? Date.now;
    this.lastContactMs = this.now();
  }

  start(): void {
    if (this.timer !== null) return;
    this.lastContactMs = this.now();
    this.timer = setInterval(() => this.tick(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One step (the interval's); public for tests that drive it with their own clock. */
  tick(): void {
    const now = this.now();
    // A tick this late means the process itself stood still (a long GC, a blocked loop): it could not read the
    // server's answers meanwhile, so that gap is not counted as the server's silence.
    const stalled = this.lastTickMs !== null && now - this.lastTickMs > 2 * this.options.intervalMs;
    this.lastTickMs = now;
    if (!this.options.busy()) {
      this.lastContactMs = now;
      return;
    }
    if (stalled) this.lastContactMs = Math.max(this.lastContactMs, now - this.options.intervalMs);
    if (now - this.lastContactMs >= this.options.silenceMs) {
      this.confirmSilence();
      return;
    }
    this.sendPing();
  }

  private sendPing(): void {
    if (this.pinging) return;
    this.pinging = true;
    // The answer's arrival is the contact (a ping queued while disconnected is only answered after a reconnect).
    this.options.ping().then(
      () => {
        this.lastContactMs = Math.max(this.lastContactMs, this.now());
        this.pinging = false;
      },
      () => {
        this.pinging = false;
      },
    );
  }

  /**
   * Decided after the I/O that is due now: an answer already waiting in the socket (read after the timers of this
   * turn of the event loop) still counts.
   */
  private confirmSilence(): void {
    if (this.confirming) return;
    this.confirming = true;
    setImmediate(() => {
      this.confirming = false;
      const silentForMs = this.now() - this.lastContactMs;
      if (!this.options.busy() || silentForMs < this.options.silenceMs) return;
      // Counted again from here: a run that arrives later came through the server.
      this.lastContactMs = this.now();
      this.options.onSilent(silentForMs);
    });
  }
}
