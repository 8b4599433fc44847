/**
 * A small server-sent events parser following the WHATWG "event stream interpretation" rules:
 * lines end in CRLF, LF or CR (a CRLF split across two chunks counts once); a line starting with ':' is a comment
 * (keep-alive); `data:` lines of one event are joined with "\n"; one space after the colon is dropped; an empty line
 * dispatches the event; an event without data is not dispatched; an unfinished event at end of stream is discarded.
 * Chunks may split anywhere, including inside a UTF-8 character when given bytes.
 */

export interface SseEvent {
  /** The `event:` field; `message` when the event had none. */
  event: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  /** The last event id seen on the stream (`id:` fields persist across events), if any. */
  id: string | undefined;
  /** The `retry:` value in milliseconds, when this event block carried one. */
  retry?: number;
}

const LINE_BREAK = /[\r\n]/g;

export class SseParser {
  readonly #decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  /** Text of the current, unfinished line (never contains CR or LF). */
  #line = '';
  /** The previous chunk ended with CR: a LF at the start of the next one belongs to it. */
  #skipLeadingLF = false;
  /** Whether the first character of the stream has been seen (to drop one leading BOM). */
  #started = false;
  #data = '';
  #eventType = '';
  #lastId: string | undefined = undefined;
  #retry: number | undefined = undefined;

  /** Feeds a chunk (bytes or already-decoded text) and returns the events it completed, in order. */
  push(chunk: string | Uint8Array): SseEvent[] {
    const text = typeof chunk === 'string' ? chunk : this.#decoder.decode(chunk, { stream: true });
    const events: SseEvent[] = [];
    this.#feed(text, events);
    return events;
  }

  /** Ends the stream: returns events completed by the last bytes; an unfinished event is discarded (per spec). */
  end(): SseEvent[] {
    const events: SseEvent[] = [];
    this.#feed(this.#decoder.decode(), events);
    this.#line = '';
    this.#data = '';
    this.#eventType = '';
    this.#retry = undefined;
    return events;
  }

  #feed(text: string, events: SseEvent[]): void {
    if (text === '') return;
    let start = 0;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) start = 1;
    }
    if (this.#skipLeadingLF) {
      this.#skipLeadingLF = false;
      if (text.charCodeAt(start) === 0x0a) start += 1;
    }
    LINE_BREAK.lastIndex = start;
    for (;;) {
      const match = LINE_BREAK.exec(text);
      if (match === null) break;
      const at = match.index;
      const line = this.#line + text.slice(start, at);
      this.#line = '';
      if (text.charCodeAt(at) === 0x0d) {
        if (at + 1 === text.length) {
          this.#skipLeadingLF = true;
          start = at + 1;
        } else {
          start = text.charCodeAt(at + 1) === 0x0a ? at + 2 : at + 1;
        }
      } else {
        start = at + 1;
      }
      LINE_BREAK.lastIndex = start;
      this.#processLine(line, events);
    }
    this.#line += text.slice(start);
  }

  #processLine(line: string, events: SseEvent[]): void {
    if (line === '') {
      this.#dispatch(events);
      return;
    }
    if (line.charCodeAt(0) === 0x3a /* ':' */) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    switch (field) {
      case 'event':
        this.#eventType = value;
        break;
      case 'data':
        this.#data += value + '\n';
        break;
      case 'id':
        if (!value.includes('\u0000')) this.#lastId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.#retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  #dispatch(events: SseEvent[]): void {
    const data = this.#data;
    const eventType = this.#eventType;
    const retry = this.#retry;
    this.#data = '';
    this.#eventType = '';
    this.#retry = undefined;
    if (data === '') return;
    const event: SseEvent = {
      event: eventType === '' ? 'message' : eventType,
      data: data.slice(0, -1),
      id: this.#lastId,
    };
    if (retry !== undefined) event.retry = retry;
    events.push(event);
  }
}

/** Reads an event stream body to its end, yielding each event. Returning early cancels the body. */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent, void, undefined> {
  const reader = body.getReader();
  const parser = new SseParser();
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        yield* parser.end();
        return;
      }
      yield* parser.push(value);
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
