/**
 * The operator's memory across restarts (SQLite in the data dir): how far the chain has been read (a block number and
 * its hash, so a reorg under the cursor is noticed), the block hashes of recent read positions (to find the common
 * ancestor after a reorg), every job call seen with the state of its handling, and the assignment events of the
 * service manager. One scope per (chain, jobs contract, service manager, service id): a data dir pointed at another
 * chain or service starts from the beginning instead of from a cursor that means nothing there.
 *
 * Bounded under a long run: a call that is done and whose block is older than the oldest kept read position (the
 * deepest reorg the walk back can handle) is deleted with its assignment events. The cursor is past it, so a restart
 * never reads it again; only a reorg deeper than every kept position (which rereads from the start) would, and then
 * the operator finds it completed on chain before running it.
 */
import type Database from 'better-sqlite3';
import { openSqlite } from '../store/open-sqlite.js';

/**
 * seen: read from a confirmed block, not (yet) ours to run. running: ours, being run. submitted: the result is computed
 * and kept here, its transaction is being sent (a restart sends it again; "already completed" counts as done).
 * done: on chain (ours or another operator's result). A call seen only in blocks a reorg removed is deleted unless it
 * was submitted or done.
 */
export type CallState = 'seen' | 'running' | 'submitted' | 'done';

export interface BlockRef {
  number: bigint;
  hash: `0x${string}`;
}

export interface CallRecord {
  callId: bigint;
  jobIndex: number;
  caller: `0x${string}`;
  inputs: `0x${string}`;
  blockNumber: bigint;
  blockHash: `0x${string}`;
  state: CallState;
  /** The result to send (state submitted) or sent (done, when this operator answered). */
  result: `0x${string}` | null;
}

export interface AssignmentEvent {
  callId: bigint;
  kind: 'assigned' | 'released';
  operator: `0x${string}`;
  /** Unix seconds (assigned); 0 for released. */
  deadline: bigint;
  /** Released: 0 result, 1 timeout (reassigned next), 2 holder gone (the manager failed the job on chain). */
  reason: number;
  blockNumber: bigint;
  blockHash: `0x${string}`;
  logIndex: number;
}

/** The current assignment of a call, from its latest assignment event. */
export interface Assignment {
  callId: bigint;
  operator: `0x${string}`;
  deadline: bigint;
  /** Released with a result (reason 0) or failed by the manager (2, INSTANCE_HOLDER_GONE): nothing more to do by anyone. */
  done: boolean;
  /** Released on timeout and not yet reassigned (only between the two events of one transaction). */
  released: boolean;
}

/**
 * Block hashes kept for finding a common ancestor; a reorg deeper than this many read positions rereads from the
 * start. Done calls older than the oldest kept position are pruned.
 */
const KEPT_BLOCKS = 512;

const num = (value: bigint): number => Number(value);

export class CursorStore {
  private readonly db: Database.Database;
  private readonly scope: string;

  constructor(file: string, scope: string) {
    this.scope = scope;
    this.db = openSqlite(file, (db) => {
      db.exec(`
        CREATE TABLE IF NOT EXISTS operator_cursor (scope TEXT PRIMARY KEY, block_number INTEGER NOT NULL, block_hash TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS operator_blocks (scope TEXT NOT NULL, block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, PRIMARY KEY (scope, block_number));
        CREATE TABLE IF NOT EXISTS operator_calls (
          scope TEXT NOT NULL, call_id TEXT NOT NULL, job_index INTEGER NOT NULL, caller TEXT NOT NULL, inputs TEXT NOT NULL,
          block_number INTEGER NOT NULL, block_hash TEXT NOT NULL, state TEXT NOT NULL, result TEXT, updated_at_ms INTEGER NOT NULL,
          PRIMARY KEY (scope, call_id));
        CREATE INDEX IF NOT EXISTS operator_calls_state ON operator_calls (scope, state);
        CREATE TABLE IF NOT EXISTS operator_assignment_events (
          scope TEXT NOT NULL, block_number INTEGER NOT NULL, log_index INTEGER NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
          operator TEXT NOT NULL, deadline TEXT NOT NULL, reason INTEGER NOT NULL,
          PRIMARY KEY (scope, block_number, log_index));
        CREATE INDEX IF NOT EXISTS operator_assignment_call ON operator_assignment_events (scope, call_id);
      `);
    });
  }

  cursor(): BlockRef | null {
    const row = this.db.prepare('SELECT block_number AS n, block_hash AS h FROM operator_cursor WHERE scope = ?').get(this.scope) as { n: number; h: `0x${string}` } | undefined;
    return row ? { number: BigInt(row.n), hash: row.h } : null;
  }

  /** Kept read positions at or below `belowOrAt`, newest first (for the walk back after a reorg). */
  knownBlocks(belowOrAt: bigint): BlockRef[] {
    const rows = this.db.prepare('SELECT block_number AS n, block_hash AS h FROM operator_blocks WHERE scope = ? AND block_number <= ? ORDER BY block_number DESC').all(this.scope, num(belowOrAt)) as { n: number; h: `0x${string}` }[];
    return rows.map((row) => ({ number: BigInt(row.n), hash: row.h }));
  }

  /**
   * Records what one read of blocks (cursor+1 .. to) found and moves the cursor to `to`, in one transaction: a crash
   * leaves either all of it or none (then the same range is read again; inserting a call twice changes nothing).
   * Returns the calls that are new (not seen before).
   */
  commitRange(to: BlockRef, calls: Omit<CallRecord, 'state' | 'result'>[], events: AssignmentEvent[], nowMs: number): bigint[] {
    const fresh: bigint[] = [];
    this.db.transaction(() => {
      const existing = this.db.prepare('SELECT block_hash AS h, job_index AS jobIndex, caller, inputs, state FROM operator_calls WHERE scope = ? AND call_id = ?');
      for (const call of calls) {
        const row = existing.get(this.scope, call.callId.toString()) as { h: string; jobIndex: number; caller: string; inputs: string; state: CallState } | undefined;
        if (row === undefined) {
          this.db
            .prepare('INSERT INTO operator_calls (scope, call_id, job_index, caller, inputs, block_number, block_hash, state, result, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)')
            .run(this.scope, call.callId.toString(), call.jobIndex, call.caller, call.inputs, num(call.blockNumber), call.blockHash, 'seen', nowMs);
          fresh.push(call.callId);
        } else if ((row.inputs !== call.inputs || row.jobIndex !== call.jobIndex || row.caller.toLowerCase() !== call.caller.toLowerCase()) && row.state !== 'done') {
          // The id now names another job (the old one was reorged away with our result): start over with this one. The
          // inputs alone do not tell: jobs 7 and 8 on the same instance, or two callers, have the same encoding.
          this.db.prepare("UPDATE operator_calls SET job_index = ?, caller = ?, inputs = ?, block_number = ?, block_hash = ?, state = 'seen', result = NULL, updated_at_ms = ? WHERE scope = ? AND call_id = ?").run(call.jobIndex, call.caller, call.inputs, num(call.blockNumber), call.blockHash, nowMs, this.scope, call.callId.toString());
          fresh.push(call.callId);
        } else if (row.h !== call.blockHash) {
          // The same job again in another block (it reappeared after a reorg): its state stands.
          this.db.prepare('UPDATE operator_calls SET block_number = ?, block_hash = ?, updated_at_ms = ? WHERE scope = ? AND call_id = ?').run(num(call.blockNumber), call.blockHash, nowMs, this.scope, call.callId.toString());
          if (row.state === 'seen') fresh.push(call.callId);
        }
      }
      const insertEvent = this.db.prepare('INSERT OR REPLACE INTO operator_assignment_events (scope, block_number, log_index, call_id, kind, operator, deadline, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
      for (const event of events) {
        insertEvent.run(this.scope, num(event.blockNumber), event.logIndex, event.callId.toString(), event.kind, event.operator.toLowerCase(), event.deadline.toString(), event.reason);
      }
      this.db.prepare('INSERT OR REPLACE INTO operator_cursor (scope, block_number, block_hash) VALUES (?, ?, ?)').run(this.scope, num(to.number), to.hash);
      // Every block something was read from is a position to walk back to (a block still on the chain vouches for
      // all blocks before it), besides the range's end.
      const insertBlock = this.db.prepare('INSERT OR REPLACE INTO operator_blocks (scope, block_number, block_hash) VALUES (?, ?, ?)');
      for (const block of [...calls, ...events]) insertBlock.run(this.scope, num(block.blockNumber), block.blockHash);
      insertBlock.run(this.scope, num(to.number), to.hash);
      this.db.prepare('DELETE FROM operator_blocks WHERE scope = ? AND block_number < (SELECT MIN(block_number) FROM (SELECT block_number FROM operator_blocks WHERE scope = ? ORDER BY block_number DESC LIMIT ?))').run(this.scope, this.scope, KEPT_BLOCKS);
      this.prune();
    })();
    return fresh;
  }

  /**
   * Deletes done calls from blocks older than the oldest kept read position, and assignment events that old of calls
   * no longer kept (done and pruned, or never read: older than --start-block). What a restart needs stays: the cursor,
   * the kept positions, every call not done (seen, running, submitted: their results) and the recent done ones (a
   * reorg within the kept positions turns them back to submitted).
   */
  private prune(): void {
    const floor = (this.db.prepare('SELECT MIN(block_number) AS n FROM operator_blocks WHERE scope = ?').get(this.scope) as { n: number | null }).n;
    if (floor === null) return;
    this.db.prepare("DELETE FROM operator_calls WHERE scope = ? AND state = 'done' AND block_number < ?").run(this.scope, floor);
    this.db
      .prepare('DELETE FROM operator_assignment_events WHERE scope = ? AND block_number < ? AND call_id NOT IN (SELECT call_id FROM operator_calls WHERE scope = ?)')
      .run(this.scope, floor, this.scope);
  }

  /**
   * A reorg replaced the blocks after `ancestor` (null: every kept position is gone; read again from the start):
   * forgets what was read from them. Calls seen or running there are deleted (their job may not exist any more; if it
   * reappears it is read again); submitted and done ones go back to submitted, so their result is sent again once
   * the call is known again ("already completed" is success). Returns the deleted call ids (running ones must stop).
   */
  rewind(ancestor: BlockRef | null, nowMs: number): bigint[] {
    const after = ancestor === null ? -1 : num(ancestor.number);
    let dropped: bigint[] = [];
    this.db.transaction(() => {
      const rows = this.db.prepare("SELECT call_id AS id FROM operator_calls WHERE scope = ? AND block_number > ? AND state IN ('seen', 'running')").all(this.scope, after) as { id: string }[];
      dropped = rows.map((row) => BigInt(row.id));
      this.db.prepare("DELETE FROM operator_calls WHERE scope = ? AND block_number > ? AND state IN ('seen', 'running')").run(this.scope, after);
      this.db.prepare("UPDATE operator_calls SET state = 'submitted', updated_at_ms = ? WHERE scope = ? AND block_number > ? AND state = 'done' AND result IS NOT NULL").run(nowMs, this.scope, after);
      this.db.prepare('DELETE FROM operator_assignment_events WHERE scope = ? AND block_number > ?').run(this.scope, after);
      this.db.prepare('DELETE FROM operator_blocks WHERE scope = ? AND block_number > ?').run(this.scope, after);
      if (ancestor === null) this.db.prepare('DELETE FROM operator_cursor WHERE scope = ?').run(this.scope);
      else this.db.prepare('INSERT OR REPLACE INTO operator_cursor (scope, block_number, block_hash) VALUES (?, ?, ?)').run(this.scope, after, ancestor.hash);
    })();
    return dropped;
  }

  call(callId: bigint): CallRecord | null {
    const row = this.db.prepare('SELECT * FROM operator_calls WHERE scope = ? AND call_id = ?').get(this.scope, callId.toString()) as CallRow | undefined;
    return row ? toCall(row) : null;
  }

  callsIn(state: CallState): CallRecord[] {
    const rows = this.db.prepare('SELECT * FROM operator_calls WHERE scope = ? AND state = ? ORDER BY CAST(call_id AS INTEGER)').all(this.scope, state) as CallRow[];
    return rows.map(toCall);
  }

  /**
   * Moves a call to `state` only when it is in one of `from` and still from block `blockHash` (a reorg between the
   * read and this write deleted or changed it). Returns whether it moved.
   */
  transition(callId: bigint, from: readonly CallState[], state: CallState, options: { blockHash?: `0x${string}`; result?: `0x${string}` | null; nowMs: number }): boolean {
    const placeholders = from.map(() => '?').join(', ');
    const info = this.db
      .prepare(`UPDATE operator_calls SET state = ?, result = COALESCE(?, result), updated_at_ms = ? WHERE scope = ? AND call_id = ? AND state IN (${placeholders})${options.blockHash ? ' AND block_hash = ?' : ''}`)
      .run(state, options.result ?? null, options.nowMs, this.scope, callId.toString(), ...from, ...(options.blockHash ? [options.blockHash] : []));
    return info.changes > 0;
  }

  /** The current assignment of every call that has one (latest event per call). */
  assignments(): Assignment[] {
    const rows = this.db
      .prepare(
        `SELECT e.call_id AS id, e.kind AS kind, e.operator AS operator, e.deadline AS deadline, e.reason AS reason FROM operator_assignment_events e
         WHERE e.scope = ? AND NOT EXISTS (SELECT 1 FROM operator_assignment_events n WHERE n.scope = e.scope AND n.call_id = e.call_id
           AND (n.block_number > e.block_number OR (n.block_number = e.block_number AND n.log_index > e.log_index)))`,
      )
      .all(this.scope) as { id: string; kind: 'assigned' | 'released'; operator: `0x${string}`; deadline: string; reason: number }[];
    return rows.map((row) => ({
      callId: BigInt(row.id),
      operator: row.operator,
      deadline: BigInt(row.deadline),
      done: row.kind === 'released' && row.reason !== 1,
      released: row.kind === 'released' && row.reason === 1,
    }));
  }

  assignmentOf(callId: bigint): Assignment | null {
    return this.assignments().find((assignment) => assignment.callId === callId) ?? null;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

interface CallRow {
  call_id: string;
  job_index: number;
  caller: `0x${string}`;
  inputs: `0x${string}`;
  block_number: number;
  block_hash: `0x${string}`;
  state: CallState;
  result: `0x${string}` | null;
}

function toCall(row: CallRow): CallRecord {
  return {
    callId: BigInt(row.call_id),
    jobIndex: row.job_index,
    caller: row.caller,
    inputs: row.inputs,
    blockNumber: BigInt(row.block_number),
    blockHash: row.block_hash,
    state: row.state,
    result: row.result,
  };
}
