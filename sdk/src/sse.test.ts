import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readSse, SseParser, type SseEvent } from './sse.js';

function parseWhole(input: string): SseEvent[] {
  const parser = new SseParser();
  return [...parser.push(input), ...parser.end()];
}

/** Feeds `input` split at every given position. */
function parseSplit(input: string, cuts: number[]): SseEvent[] {
  const parser = new SseParser();
  const events: SseEvent[] = [];
  let from = 0;
  for (const cut of [...cuts, input.length]) {
    events.push(...parser.push(input.slice(from, cut)));
    from = cut;
  }
  events.push(...parser.end());
  return events;
}

const ev = (event: string, data: string, id?: string): SseEvent => ({ event, data, id });

describe('SseParser', () => {
  it('parses named events and joins multi-line data with \\n', () => {
    const input = 'event: stdout\ndata: line one\ndata: line two\n\nevent: exit\ndata: {"exitCode":0}\n\n';
    assert.deepEqual(parseWhole(input), [ev('stdout', 'line one\nline two'), ev('exit', '{"exitCode":0}')]);
  });

  it('accepts LF, CRLF and lone CR line endings, mixed', () => {
    const input = 'event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\revent: c\ndata: 3\n\n';
    assert.deepEqual(parseWhole(input), [ev('a', '1'), ev('b', '2'), ev('c', '3')]);
  });

  it('gives the same events for every way of splitting the input into two or three chunks', () => {
    const input =
      '\uFEFF: keep-alive\r\nevent: stdout\r\ndata: héllo\r\ndata:\r\ndata:  two spaces\r\n\r\n' +
      ':ping\n\nid: 7\nevent: stderr\ndata: x\r\rdata: default type\n\nevent: exit\ndata: {}\n\n';
    const expected = parseWhole(input);
    assert.deepEqual(expected, [
      ev('stdout', 'héllo\n\n two spaces'),
      ev('stderr', 'x', '7'),
      ev('message', 'default type', '7'),
      ev('exit', '{}', '7'),
    ]);
    for (let i = 0; i <= input.length; i++) {
      assert.deepEqual(parseSplit(input, [i]), expected, `split at ${i}`);
      for (let j = i; j <= input.length; j += 7) {
        assert.deepEqual(parseSplit(input, [i, j]), expected, `split at ${i},${j}`);
      }
    }
    // One character at a time.
    assert.deepEqual(
      parseSplit(
        input,
        [...input].map((_, k) => k),
      ),
      expected,
    );
  });

  it('does not count a CRLF split across chunks as two line breaks', () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push('data: a\r'), []);
    // If the LF were a second line break, this would dispatch an event with data "a" right here.
    assert.deepEqual(parser.push('\ndata: b\r'), []);
    assert.deepEqual(parser.push('\n\r'), [ev('message', 'a\nb')]);
    assert.deepEqual(parser.push('\n'), []);
  });

  it('ignores comments and keep-alives, alone or inside an event', () => {
    assert.deepEqual(parseWhole(':\n\n: ping\n\nevent: stdout\n: in between\ndata: x\n\n'), [ev('stdout', 'x')]);
  });

  it('strips exactly one space after the colon and handles a line without a colon', () => {
    assert.deepEqual(parseWhole('data:x\n\n'), [ev('message', 'x')]);
    assert.deepEqual(parseWhole('data:   x \n\n'), [ev('message', '  x ')]);
    assert.deepEqual(parseWhole('data\n\n'), [ev('message', '')]);
    assert.deepEqual(parseWhole('data: a:b:c\n\n'), [ev('message', 'a:b:c')]);
  });

  it('dispatches an empty data line as an empty chunk, but not an event without data', () => {
    assert.deepEqual(parseWhole('event: stdout\ndata:\n\n'), [ev('stdout', '')]);
    assert.deepEqual(parseWhole('event: stdout\n\nevent: x\nid: 1\n\n'), []);
  });

  it('resets the event type after each event and ignores unknown fields', () => {
    assert.deepEqual(parseWhole('event: stderr\nfoo: bar\ndata: 1\n\ndata: 2\n\n'), [
      ev('stderr', '1'),
      ev('message', '2'),
    ]);
  });

  it('keeps the last id across events, ignores ids with NUL, and reports retry', () => {
    const events = parseWhole('id: 1\ndata: a\n\ndata: b\n\nid: x\u0000y\nretry: 1500\ndata: c\n\nretry: 1s\ndata: d\n\n');
    assert.deepEqual(events, [ev('message', 'a', '1'), ev('message', 'b', '1'), { ...ev('message', 'c', '1'), retry: 1500 }, ev('message', 'd', '1')]);
  });

  it('discards an unfinished event at end of stream', () => {
    assert.deepEqual(parseWhole('data: done\n\ndata: half'), [ev('message', 'done')]);
    assert.deepEqual(parseWhole('data: done\n\ndata: half\n'), [ev('message', 'done')]);
  });

  it('strips one leading BOM only', () => {
    assert.deepEqual(parseWhole('\uFEFFdata: a\n\n'), [ev('message', 'a')]);
    const parser = new SseParser();
    assert.deepEqual([...parser.push('\uFEFF'), ...parser.push('\uFEFFdata: a\n\n')], []); // second BOM is part of the field name
  });

  it('decodes UTF-8 split inside a character across byte chunks', () => {
    const bytes = new TextEncoder().encode('event: stdout\ndata: ü€😀 done\n\n');
    for (let cut = 1; cut < bytes.length; cut++) {
      const parser = new SseParser();
      const events = [...parser.push(bytes.subarray(0, cut)), ...parser.push(bytes.subarray(cut)), ...parser.end()];
      assert.deepEqual(events, [ev('stdout', 'ü€😀 done')], `cut at byte ${cut}`);
    }
  });
});

describe('readSse', () => {
  it('reads a byte stream to its end and cancels the body when the consumer stops early', async () => {
    const chunks = ['event: a\nda', 'ta: 1\n\nevent: b\ndata: 2\n\n', 'event: c\ndata: 3\n\n'];
    let cancelled = false;
    let pulls = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const chunk = chunks[pulls++];
        if (chunk === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(chunk));
      },
      cancel() {
        cancelled = true;
      },
    });
    const seen: string[] = [];
    for await (const event of readSse(body)) {
      seen.push(`${event.event}=${event.data}`);
      if (event.event === 'b') break;
    }
    assert.deepEqual(seen, ['a=1', 'b=2']);
    assert.equal(cancelled, true);
  });
});
