/**
 * Waiting on observable state instead of sleeping a fixed time: a test that sleeps 50 ms and then expects something
 * to have happened fails on a loaded machine and proves nothing on a fast one. `waitFor` polls a condition until it
 * holds and fails with what it waited for when it never does; its timeout is a generous backstop, not a margin the
 * test relies on.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitOptions {
  /** Give up (throw) after this long; default 30 s. Only a backstop: the condition decides when the wait ends. */
  timeoutMs?: number;
  /** Time between checks; default 10 ms. */
  intervalMs?: number;
  /** What is waited for, for the error message. */
  what?: string;
}

/** Resolves once `condition()` returns true (it may be async); throws after `timeoutMs`. */
export async function waitFor(condition: () => boolean | Promise<boolean>, options: WaitOptions = {}): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what ?? 'a condition'}`);
    await sleep(options.intervalMs ?? 10);
  }
}

/** Resolves with the first value `attempt()` returns without throwing; rethrows its last error after `timeoutMs`. */
export async function retryUntil<T>(attempt: () => Promise<T>, options: WaitOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (performance.now() > deadline) throw error;
    }
    await sleep(options.intervalMs ?? 10);
  }
}
