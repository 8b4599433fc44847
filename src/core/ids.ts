import { randomFillSync } from 'node:crypto';

/**
 * Random bytes for ids, drawn from a pool refilled 4 KiB at a time (the same CSPRNG as randomBytes): one
 * randomBytes(8) call per id cost ~1-2 µs, and a request makes up to four ids (request, trace, span, invocation). For
 * identifiers only; secrets (API keys) take their own randomBytes.
 */
const pool = Buffer.allocUnsafeSlow(4096);
let poolOffset = pool.length;

/** `bytes` random bytes as lower-case hex (at most 4096 bytes). */
export function randomHex(bytes: number): string {
  if (poolOffset + bytes > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const hex = pool.toString('hex', poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  return hex;
}

/** Sortable, URL-safe ids: a millisecond timestamp in base36 then 64 random bits, with a readable prefix. */
export function newId(prefix: string, nowMs: number = Date.now()): string {
  return `${prefix}_${nowMs.toString(36).padStart(9, '0')}${randomHex(8)}`;
}

export const newExecutionId = (): string => newId('ex');
export const newInstanceId = (): string => randomHex(6);
