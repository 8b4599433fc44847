/**
 * A NATS user of its own for one worker (deploy/nats/authorization.conf, "Securing NATS" in docs/cluster.md). The
 * shared `kindling-worker` user may subscribe to every worker's runs; a worker's own user only to the runs, cancels and
 * id questions addressed to it, and to its own request inboxes (`_INBOX_WORKERS.<id>.>`, the prefix a worker sets),
 * so the credentials of one worker host read no other worker's calls (other tenants' inline code and payloads) nor
 * the answers to another worker's requests. What it may publish is every worker's (`$KINDLING_WORKER_PUBLISH`), which
 * includes reading any object of the bundle store by subject: bundles and layers stay readable by every worker.
 */
import { WORKER_INBOX_PREFIX } from './connection.js';
import { cancelSubject, invokeSubject, pingSubject, DELETED_SUBJECT } from './run-protocol.js';

const NODE_ID = /^[A-Za-z0-9_-]{1,128}$/;

/** The request inbox prefix of a worker: its own, under the workers' (gateways answer there). */
export function workerInboxPrefix(nodeId: string): string {
  return `${WORKER_INBOX_PREFIX}.${nodeId}`;
}

/** The subjects a worker with this id may subscribe to. */
export function workerSubscribeSubjects(nodeId: string): string[] {
  return [invokeSubject(nodeId), cancelSubject(nodeId), pingSubject(nodeId), DELETED_SUBJECT, `${workerInboxPrefix(nodeId)}.>`];
}

/**
 * The environment variable nats-server reads this worker's password from: KINDLING_WORKER_<ID>_PASSWORD, the id's
 * letters and digits kept as they are (case too) and `-`, `_` written `_2D`, `_5F`, so no two ids share one.
 */
export function workerPasswordVariable(nodeId: string): string {
  return `KINDLING_WORKER_${nodeId.replace(/[-_]/g, (char) => (char === '-' ? '_2D' : '_5F'))}_PASSWORD`;
}

/**
 * The entry of `authorization { users = [...] }` for the worker `nodeId`: user `kindling-worker-<id>`, its password
 * from nats-server's environment (or a bcrypt hash made by `nats-server passwd`).
 */
export function workerUserEntry(nodeId: string, password?: string): string {
  if (!NODE_ID.test(nodeId)) throw new Error(`"${nodeId.slice(0, 140)}" is not a node id: use letters, digits, "-" and "_" (at most 128), as --node-name makes it`);
  const subscribe = workerSubscribeSubjects(nodeId).map((subject) => JSON.stringify(subject)).join(', ');
  const secret = password === undefined ? `$${workerPasswordVariable(nodeId)}` : JSON.stringify(password);
  return `{ user: "kindling-worker-${nodeId}", password: ${secret}, permissions: { publish: $KINDLING_WORKER_PUBLISH, subscribe: [${subscribe}] } }`;
}
