import { randomBytes } from 'node:crypto';
import type { QueueNames } from '../../src/cluster/async-queue.js';

/** Stream, subject, consumer and bucket names no other test uses. */
export function uniqueQueueNames(): QueueNames {
  const tag = randomBytes(4).toString('hex');
  return { stream: `T_INV_${tag}`, subjectPrefix: `t${tag}.inv`, consumer: `w${tag}`, outcomesBucket: `T_OUT_${tag}` };
}
