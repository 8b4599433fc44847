/**
 * Live logs of the dependency builds running now (in-process): what npm / pip wrote so far, for the log route and its
 * followers. It observes; it never drives the build: appending never waits for a follower, and what a build keeps in
 * memory is bounded (the newest `keptBytes` of its log; older text goes and is counted as skipped).
 */

/** Text of a running build's log kept for readers that join late (the newest part: npm and pip print errors last). */
export const LIVE_LOG_BYTES = 1024 * 1024;

/** What a follower gets: the log as it is written, then the end of the build (its record is in the build store). */
export type BuildLogMessage = { kind: 'log'; text: string } | { kind: 'end' };

interface Live {
  chunks: string[];
  bytes: number;
  /** Characters of the log dropped from the head of `chunks` to stay within the bound. */
  droppedBytes: number;
  listeners: Set<(message: BuildLogMessage) => void>;
}

export class BuildLogs {
  private readonly live = new Map<string, Live>();

  constructor(private readonly keptBytes = LIVE_LOG_BYTES) {}

  /** A build started: its log is kept from now until `end`. */
  open(id: string): void {
    this.live.set(id, { chunks: [], bytes: 0, droppedBytes: 0, listeners: new Set() });
  }

  append(id: string, text: string): void {
    const live = this.live.get(id);
    if (live === undefined || text === '') return;
    // A single chunk larger than the bound keeps its end.
    const kept = text.length > this.keptBytes ? text.slice(-this.keptBytes) : text;
    live.droppedBytes += text.length - kept.length;
    live.chunks.push(kept);
    live.bytes += kept.length;
    while (live.bytes > this.keptBytes && live.chunks.length > 1) {
      const first = live.chunks.shift()!;
      live.bytes -= first.length;
      live.droppedBytes += first.length;
    }
    for (const listener of live.listeners) listener({ kind: 'log', text });
  }

  /** The build ended (its record is final): followers get `end`, the kept log goes. */
  end(id: string): void {
    const live = this.live.get(id);
    if (live === undefined) return;
    this.live.delete(id);
    for (const listener of live.listeners) listener({ kind: 'end' });
  }

  /** The log kept so far of a running build; undefined when it is not running here. */
  text(id: string): { text: string; droppedBytes: number } | undefined {
    const live = this.live.get(id);
    return live === undefined ? undefined : { text: live.chunks.join(''), droppedBytes: live.droppedBytes };
  }

  /**
   * Follows a running build: the log kept so far (and how much of its head is gone), then every chunk and the end, to
   * `listener`, called synchronously by the build's writer (it must not block). Undefined when the build does not run.
   */
  follow(id: string, listener: (message: BuildLogMessage) => void): { replay: string; droppedBytes: number; stop: () => void } | undefined {
    const live = this.live.get(id);
    if (live === undefined) return undefined;
    live.listeners.add(listener);
    return { replay: live.chunks.join(''), droppedBytes: live.droppedBytes, stop: () => live.listeners.delete(listener) };
  }

  /** Builds running now (tests). */
  get size(): number {
    return this.live.size;
  }
}
