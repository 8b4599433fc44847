/**
 * The followed build log (GET /v1/functions/NAME/builds/ID/logs?follow=true) over a real socket, with a fake build
 * store and the real BuildLogs hub: a follower that stops reading costs the build nothing and the server a bounded
 * buffer (text beyond it is dropped and reported as `skipped`, so what it got plus what it was told it missed is exactly
 * what the build wrote), and it still gets `end` with the final record.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { KindlingError } from '../../core/errors.js';
import { BuildLogs } from '../../orchestrator/build-logs.js';
import type { BuildRecord } from '../../store/builds-sqlite.js';
import { buildHarness, type Harness } from '../test-support.js';
import { FOLLOWER_BACKLOG_BYTES, newestBytes } from './functions.js';

interface SseEvent {
  event: string;
  data: string;
}

/** Server-sent events of a whole response body (the stream is read to its end first). */
function parseSse(body: string): SseEvent[] {
  return body
    .split('\n\n')
    .map((block) => block.split('\n').filter((line) => line !== '' && !line.startsWith(':')))
    .filter((lines) => lines.length > 0)
    .map((lines) => ({
      event: lines.find((line) => line.startsWith('event: '))?.slice(7) ?? 'message',
      data: lines.filter((line) => line.startsWith('data: ')).map((line) => line.slice(6)).join('\n'),
    }));
}

/** The payload of a chunked transfer-coded body. */
function dechunk(body: Buffer): string {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', at);
    const size = parseInt(body.subarray(at, lineEnd).toString('latin1'), 16);
    if (!(size > 0)) break;
    parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
    at = lineEnd + 2 + size + 2;
  }
  return Buffer.concat(parts).toString('utf8');
}

describe('following a build log (real socket, fake build store)', () => {
  let h: Harness;
  let url: URL;
  const hub = new BuildLogs();
  const records = new Map<string, BuildRecord>();
  const find = (tenant: string, name: string, id: string): BuildRecord => {
    const found = records.get(id);
    if (found === undefined || found.tenant !== tenant || found.function !== name) throw new KindlingError('BUILD_NOT_FOUND', `no build "${id}"`);
    return found;
  };
  before(async () => {
    h = await buildHarness({
      auth: false,
      functions: {
        build: find,
        buildLog: (tenant, name, id) => ({ build: find(tenant, name, id), log: hub.text(id)?.text ?? '' }),
        followBuildLog: (tenant, name, id, listener) => {
          const build = find(tenant, name, id);
          const following = build.status === 'building' ? hub.follow(id, listener) : undefined;
          return following === undefined ? { build, replay: '', droppedBytes: 0, running: false, stop: () => undefined } : { build, ...following, running: true };
        },
      },
    });
    url = new URL(await h.app.listen({ host: '127.0.0.1', port: 0 }));
  });
  after(() => h.close());

  it('drops what a follower that does not read cannot take, tells it how much, and ends with the record', async () => {
    const id = 'bld_slow';
    records.set(id, { id, tenant: 'default', function: 'slow', kind: 'npm', status: 'building', startedAtMs: 1 });
    hub.open(id);
    hub.append(id, 'first line\n');
    // A client that sends its request and then does not read: what the server writes piles up in the socket.
    const socket = connect(Number(url.port), url.hostname);
    const received: Buffer[] = [];
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write(`GET /v1/functions/slow/builds/${id}/logs?follow=true HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`);
    // The stream opened (its headers and the replay arrived), then the client stops reading.
    await new Promise<void>((resolve) => {
      const onData = (chunk: Buffer): void => {
        received.push(chunk);
        if (Buffer.concat(received).includes('first line')) {
          socket.off('data', onData);
          socket.pause();
          resolve();
        }
      };
      socket.on('data', onData);
    });
    // The build writes 32 MiB, far beyond what the kernel's socket buffers and the follower's backlog hold; each
    // append returns at once (it is synchronous: the build cannot be held by the follower).
    const chunk = 'x'.repeat(64 * 1024 - 1) + '\n';
    const chunks = 512;
    const started = performance.now();
    for (let i = 0; i < chunks; i++) hub.append(id, chunk);
    const appendMs = performance.now() - started;
    records.set(id, { ...records.get(id)!, status: 'ready', version: 4, finishedAtMs: 2 });
    hub.end(id);

    // Read to the end of the response (its last chunk: the connection itself may stay open).
    await new Promise<void>((resolve) => {
      socket.on('data', (data: Buffer) => {
        received.push(data);
        if (Buffer.concat(received.slice(-2)).toString('latin1').endsWith('\r\n0\r\n\r\n')) resolve();
      });
      socket.resume();
    });
    const response = Buffer.concat(received);
    const events = parseSse(dechunk(response.subarray(response.indexOf('\r\n\r\n') + 4)));
    const logged = events.filter((e) => e.event === 'log').reduce((sum, e) => sum + Buffer.byteLength((JSON.parse(e.data) as { text: string }).text), 0);
    const skipped = events.filter((e) => e.event === 'skipped').reduce((sum, e) => sum + (JSON.parse(e.data) as { bytes: number }).bytes, 0);
    const written = 'first line\n'.length + chunks * chunk.length;
    assert.ok(skipped > 0, `some text was dropped for the slow follower (${logged} of ${written} bytes arrived)`);
    assert.equal(logged + skipped, written, 'what arrived plus what was reported skipped is what the build wrote');
    // Only what the kernel's socket buffers took plus the follower's backlog arrived: most of the 32 MiB never queued.
    assert.ok(logged < written / 2, `${logged} bytes delivered (backlog ${FOLLOWER_BACKLOG_BYTES})`);
    const end = events.at(-1);
    assert.equal(end?.event, 'end');
    assert.deepEqual(JSON.parse(end.data), { id, tenant: 'default', function: 'slow', kind: 'npm', status: 'ready', version: 4, startedAtMs: 1, finishedAtMs: 2 });
    assert.ok(appendMs < 10_000, `appending took ${appendMs} ms`);
    socket.destroy();
  });

  it("sends a late joiner only the newest part of what the build wrote so far, and counts the rest as skipped", async () => {
    const id = 'bld_late';
    records.set(id, { id, tenant: 'default', function: 'late', kind: 'npm', status: 'building', startedAtMs: 1 });
    hub.open(id);
    const line = `${'é'.repeat(511)}\n`; // 1 KiB of two-byte characters: the cut must not split one
    const lines = 900;
    for (let i = 0; i < lines; i++) hub.append(id, line);
    const response = await fetch(`${url.origin}/v1/functions/late/builds/${id}/logs?follow=true`);
    // The headers arrived: the follower is subscribed and its replay written (both come before the stream opens).
    const text = response.text();
    records.set(id, { ...records.get(id)!, status: 'ready', version: 1, finishedAtMs: 2 });
    hub.end(id);
    const events = parseSse(await text);
    const logged = events.filter((e) => e.event === 'log').map((e) => (JSON.parse(e.data) as { text: string }).text).join('');
    const skipped = events.filter((e) => e.event === 'skipped').reduce((sum, e) => sum + (JSON.parse(e.data) as { bytes: number }).bytes, 0);
    assert.ok(Buffer.byteLength(logged) <= FOLLOWER_BACKLOG_BYTES / 2, `${Buffer.byteLength(logged)} bytes replayed`);
    assert.ok(logged.endsWith(line) && !logged.includes('\ufffd'), 'the newest lines, whole characters');
    assert.equal(Buffer.byteLength(logged) + skipped, lines * Buffer.byteLength(line));
    assert.equal(events.at(-1)?.event, 'end');
  });

  it('newestBytes cuts at a character boundary', () => {
    assert.deepEqual(newestBytes('abc', 10), { text: 'abc', skippedBytes: 0 });
    assert.deepEqual(newestBytes('aéé', 3), { text: 'é', skippedBytes: 3 });
    assert.deepEqual(newestBytes('aéé', 4), { text: 'éé', skippedBytes: 1 });
  });

  it('answers another tenant\'s (or an unknown) build with 404 before opening a stream', async () => {
    records.set('bld_other', { id: 'bld_other', tenant: 'alpha', function: 'app', kind: 'pip', status: 'building', startedAtMs: 1 });
    const response = await fetch(new URL('/v1/functions/app/builds/bld_other/logs?follow=true', url));
    assert.equal(response.status, 404);
    assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'BUILD_NOT_FOUND');
  });

  it('gives a build that ended its record as the only event', async () => {
    records.set('bld_done', { id: 'bld_done', tenant: 'default', function: 'app', kind: 'pip', status: 'failed', error: 'pip install exited with 1', startedAtMs: 1, finishedAtMs: 2 });
    const response = await fetch(new URL('/v1/functions/app/builds/bld_done/logs?follow=true', url));
    assert.equal(response.status, 200);
    assert.match(String(response.headers.get('content-type')), /^text\/event-stream/);
    const events = parseSse(await response.text());
    assert.deepEqual(events.map((e) => e.event), ['end']);
    assert.equal((JSON.parse(events[0]!.data) as { error: string }).error, 'pip install exited with 1');
  });
});
