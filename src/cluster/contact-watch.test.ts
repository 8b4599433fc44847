import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ContactWatch } from './contact-watch.js';

/** A watch driven by hand: a clock the test moves and pings the test answers. */
function harness(busy = true) {
  let nowMs = 1_000;
  const state = { busy, pings: 0, silences: [] as number[], answer: null as (() => void) | null, fail: null as (() => void) | null };
  const watch = new ContactWatch({
    busy: () => state.busy,
    ping: () => {
      state.pings++;
      return new Promise<void>((resolve, reject) => {
        state.answer = resolve;
        state.fail = () => reject(new Error('disconnected'));
      });
    },
    intervalMs: 1_000,
    silenceMs: 5_000,
    onSilent: (silentForMs) => state.silences.push(silentForMs),
    now: () => nowMs,
  });
  const step = (ms: number): void => {
    nowMs += ms;
    watch.tick();
  };
  const settle = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve));
  const advance = async (ms: number): Promise<void> => {
    step(ms);
    await settle();
  };
  return { watch, state, advance, step, settle };
}

describe('ContactWatch', () => {
  it('answered pings keep a busy node from fencing', async () => {
    const { state, advance } = harness();
    for (let second = 0; second < 20; second++) {
      await advance(1_000);
      state.answer?.();
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.deepEqual(state.silences, []);
    assert.ok(state.pings >= 10, `${state.pings} pings`);
  });

  it('a server that stops answering is reported once the silence is reached, and once only', async () => {
    const { state, advance } = harness();
    await advance(1_000);
    state.answer?.();
    await new Promise((resolve) => setImmediate(resolve));
    // From here nothing answers: one ping stays outstanding (no pile-up of pings on a dead link).
    for (let second = 0; second < 4; second++) await advance(1_000);
    assert.deepEqual(state.silences, []);
    assert.equal(state.pings, 2);
    await advance(1_000);
    assert.deepEqual(state.silences, [5_000]);
    await advance(1_000);
    assert.deepEqual(state.silences, [5_000], 'reported once, counted again from there');
  });

  it('a failed ping is not contact, and the next one is sent', async () => {
    const { state, advance } = harness();
    await advance(1_000);
    state.fail?.();
    await new Promise((resolve) => setImmediate(resolve));
    await advance(1_000);
    assert.equal(state.pings, 2);
    for (let second = 0; second < 3; second++) {
      state.fail?.();
      await advance(1_000);
    }
    assert.deepEqual(state.silences, [5_000]);
  });

  it('an idle node sends nothing and its idle time is not silence', async () => {
    const { state, advance } = harness(false);
    for (let second = 0; second < 30; second++) await advance(1_000);
    assert.equal(state.pings, 0);
    state.busy = true;
    await advance(1_000);
    assert.deepEqual(state.silences, [], 'a run that just arrived came through the server');
    assert.equal(state.pings, 1);
  });

  it('a process that stood still does not take its own stall for the silence of the server; a real silence after it is caught', async () => {
    const { state, advance, settle } = harness();
    await advance(1_000);
    state.answer?.();
    await settle();
    await advance(10_000);
    assert.deepEqual(state.silences, []);
    for (let second = 0; second < 6; second++) await advance(1_000);
    assert.equal(state.silences.length, 1);
  });

  it('an answer that is already there when the silence is reached still counts', async () => {
    const { state, advance, step, settle } = harness();
    for (let second = 0; second < 4; second++) await advance(1_000);
    assert.equal(state.pings, 1, 'one ping outstanding');
    step(1_000);
    state.answer?.();
    await settle();
    assert.deepEqual(state.silences, []);
    await advance(1_000);
    assert.equal(state.pings, 2, 'pinging again after the answer');
  });
});
