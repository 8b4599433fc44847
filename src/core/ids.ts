import { randomBytes } from 'node:crypto';

/** Sortable, URL-safe ids: a millisecond timestamp in base36 then 64 random bits, with a readable prefix. */
export function newId(prefix: string, nowMs: number = Date.now()): string {
  return `${prefix}_${nowMs.toString(36).padStart(9, '0')}${randomBytes(8).toString('hex')}`;
}

export const newExecutionId = (): string => newId('ex');
export const newInstanceId = (): string => randomBytes(6).toString('hex');
