/**
 * The protocol between the host and the guest agent of a microVM, over one byte stream (virtio-serial with QEMU, vsock
 * with Firecracker). This module depends on nothing but ../frame.js and uses no Node-version-specific APIs: the guest
 * agent imports it (it runs under the node copied onto the agent disk, which holds the dist/agent tree: frame.js and
 * vm/), the host imports it too, and both sides share its tests.
 *
 * Frames are agent/frame.ts's (length, version, type, id, payload): the type is a MessageType, the id the stream's
 * (0 for PING/PONG; the host picks one id per EXEC or file operation).
 *
 * Conversation (the host always speaks first, so the agent never writes into a channel nobody reads):
 *   host PING {version}                              -> agent PONG {version, agentVersion, uptimeMs, memory}
 *   host PUT_FILE  header+bytes (see encodeFileBody) -> agent OK | ERROR
 *   host GET_FILE  {path}                            -> agent FILE header+bytes | ERROR
 *   host EXEC {argv, env, workdir, limits, stdin}    -> agent STDOUT* / STDERR* (bytes) ... EXIT {exitCode, ...} | ERROR
 *   host STDIN (bytes)* then STDIN_END, on the stream id of an EXEC
 *   host KILL on the stream id of an EXEC            -> the process tree is killed; EXIT follows
 *   host SEED (random bytes)                         -> agent OK {reseeded}: the bytes are mixed into the guest's
 *                                                       RNG and the kernel CRNG is reseeded when the guest helper can
 *                                                       (sent right after a snapshot restore: clones must not share RNG
 *                                                       state)
 *   host SANDBOX {workdir, limits, disk, uid, gid}   -> agent OK | ERROR: makes this VM a persistent sandbox (once):
 *                                                       one cgroup with the limits for every command, the work dir
 *                                                       and /tmp on the data disk (label kindling-data) or on tmpfs
 *   host EXEC {..., sandbox: true}                   -> a command of the persistent sandbox: in a child cgroup of the
 *                                                       sandbox's (KILL kills that tree only), no pid namespace of its
 *                                                       own (commands see each other's processes), no fresh tmpfs;
 *                                                       EXIT when the main process exits (background children live on)
 *   host FREEZE {frozen}                             -> agent OK: fsfreeze of the data disk (true) or thaw (false)
 *   host CLOCK {epochMs}                             -> agent OK: the guest's wall clock set (after a restore, the
 *                                                       guest's clock is the one it had when it was saved)
 *   host EXEC {..., window: N}                       -> the same EXEC with credit-based flow control on its stream, both
 *                                                       ways (the channel is shared by every stream of the VM, so no
 *                                                       side may stop reading it to slow one stream down):
 *                                                       - output: the agent sends STDOUT/STDERR payload only while it
 *                                                         has credit; it starts with N bytes and pauses the process's
 *                                                         pipes when out of it (one pipe read, < MAX_CHUNK_BYTES, may
 *                                                         overshoot). host WINDOW {bytes} grants more (as its reader
 *                                                         consumed output). A host drops a stream whose agent sends
 *                                                         more than granted + MAX_CHUNK_BYTES.
 *                                                       - input: the host sends at most N bytes of STDIN beyond what
 *                                                         the agent acknowledged; agent WINDOW {bytes} acknowledges
 *                                                         bytes written into the process's stdin.
 *                                                       - agent STDOUT_END when the process's stdout ended (EOF),
 *                                                         which can be long before EXIT (a relay whose peer closed
 *                                                         one direction); the host ends its stdout then.
 *                                                       - the agent sends EXIT after the output ended, without the
 *                                                         grace period of sandbox commands (the host ends a stream
 *                                                         whose output it no longer wants with KILL).
 *                                                       Only sent to an agent whose PONG lists the feature "window".
 *
 * Compatibility: the frame header's version byte (PROTOCOL_VERSION) stays 1 as long as the framing does not change.
 * Message types and JSON fields are added, never changed: the host announces nothing, the agent lists what it can do
 * beyond version 1.0.0 in PONG `features` ("window": WINDOW, STDOUT_END and EXEC.window; "ports": the port helper
 * PORT_HELPER_PATH is on its disk), and the host sends an addition only to an agent that lists it (an agent answers
 * a type it does not know with ERROR on that stream). An agent ignores WINDOW for a stream it does not run.
 * ERROR {message} ends a stream with a platform failure (never a user failure: those are EXIT with a code).
 */
import { FrameDecoder as BaseFrameDecoder, ProtocolError, encodeChunks as encodeAnyChunks, encodeFrame as encodeAnyFrame, type Frame } from '../frame.js';

export { HEADER_BYTES, PROTOCOL_VERSION, ProtocolError, type Frame } from '../frame.js';
/** Largest frame accepted. Bulk data (stdin, files, output) travels in chunks of at most MAX_CHUNK_BYTES. */
export const MAX_FRAME_BYTES = 8 * 1024 * 1024;
export const MAX_CHUNK_BYTES = 64 * 1024;

export const MessageType = {
  PING: 1,
  PONG: 2,
  EXEC: 3,
  STDIN: 4,
  STDIN_END: 5,
  STDOUT: 6,
  STDERR: 7,
  EXIT: 8,
  KILL: 9,
  PUT_FILE: 10,
  GET_FILE: 11,
  FILE: 12,
  OK: 13,
  ERROR: 14,
  SEED: 15,
  SANDBOX: 16,
  FREEZE: 17,
  CLOCK: 18,
  WINDOW: 19,
  STDOUT_END: 20,
} as const;

/** PONG `features` of an agent that speaks EXEC.window and WINDOW (see the conversation above). */
export const FEATURE_WINDOW = 'window';
/** PONG `features` of an agent whose disk holds the port helper (PORT_HELPER_PATH). */
export const FEATURE_PORTS = 'ports';
/** PONG `features` of an agent that mounts EXEC.binds (the read-only disks of a function's bundle and dependencies). */
export const FEATURE_BINDS = 'binds';
/**
 * Where the guest's port helper is: native/kindling-port.c, linked statically, on the agent disk (mounted read-only).
 * Run as a sandbox command with `--in-sandbox`, it connects to 127.0.0.1:PORT inside the VM and relays the
 * connection over its stdin/stdout (see src/executors/microvm/ports.ts).
 */
export const PORT_HELPER_PATH = '/run/kindling-agent/bin/kindling-port';
export type MessageTypeValue = (typeof MessageType)[keyof typeof MessageType];

const TYPE_NAMES = new Map<number, string>(Object.entries(MessageType).map(([name, value]) => [value, name]));
export function messageTypeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `UNKNOWN(${type})`;
}

/** Limits the agent applies to the process tree of one EXEC (a cgroup inside the guest). */
export interface ExecLimits {
  memoryMb: number;
  pids: number;
  cpus: number;
  /** Size of the tmpfs mounted on /tmp and on the working directory. */
  diskMb: number;
  /** RLIMIT_NOFILE of the process tree (soft and hard); absent: the guest's default. */
  openFiles?: number;
}

export interface ExecRequest {
  argv: string[];
  env: Record<string, string>;
  workdir: string;
  limits: ExecLimits;
  /** Whether STDIN frames follow; otherwise the process reads /dev/null. */
  stdin: boolean;
  /** uid/gid the process runs as (65534 = nobody). */
  uid: number;
  gid: number;
  /** A command of the persistent sandbox set up by SANDBOX (limits and mounts are the sandbox's; `limits` ignored). */
  sandbox?: boolean;
  /** Credit-based flow control on this stream with this initial window in bytes (agents with FEATURE_WINDOW only). */
  window?: number;
  /** Read-only disks to mount (ext4, found by label) at these paths, after the scratch tmpfs; outer paths first. */
  binds?: { label: string; target: string }[];
}

/** WINDOW: `bytes` more of credit (host -> agent: output it may send; agent -> host: stdin bytes written). */
export interface WindowMessage {
  bytes: number;
}

/** SANDBOX: what the persistent sandbox's commands share. */
export interface SandboxSetup {
  workdir: string;
  limits: Omit<ExecLimits, 'openFiles'>;
  /** Mount the data disk (ext4 labelled kindling-data, dirs work/ and tmp/) at the work dir and /tmp; else tmpfs. */
  disk: boolean;
  uid: number;
  gid: number;
}

/** CLOCK: the host's wall clock, in ms since the epoch. */
export interface ClockRequest {
  epochMs: number;
}

/** FREEZE: the data disk's file system frozen (writes block, everything written is on the disk) or thawed. */
export interface FreezeRequest {
  frozen: boolean;
}

export interface ExitMessage {
  exitCode: number;
  signal: string | null;
  oomKilled: boolean;
  /** From the exec's cgroup: CPU time used and peak memory, when the guest kernel reports them. */
  usage: { cpuUsec: number | null; memoryPeakBytes: number | null };
}

export interface PingMessage {
  version: number;
}

export interface PongMessage {
  version: number;
  agentVersion: string;
  /** What the agent can do beyond agent version 1.0.0 (FEATURE_WINDOW, FEATURE_PORTS, FEATURE_BINDS); absent in 1.0.0. */
  features?: string[];
  uptimeMs: number;
  memory: { totalBytes: number; availableBytes: number };
}

export interface FileHeader {
  path: string;
  /** Permission bits for PUT_FILE (default 0o644). */
  mode?: number;
}

export interface SeedReply {
  /** True when the kernel CRNG was reseeded (RNDADDENTROPY + RNDRESEEDCRNG); false when the bytes were only written
   *  to /dev/urandom (mixed into the input pool, used at the next scheduled reseed). */
  reseeded: boolean;
}

export interface ErrorMessage {
  message: string;
}

/** One frame; a frame over MAX_FRAME_BYTES throws ProtocolError. */
export function encodeFrame(type: number, stream: number, payload?: Buffer | string): Buffer {
  return encodeAnyFrame(type, stream, payload, MAX_FRAME_BYTES);
}

export function encodeJson(type: number, stream: number, value: unknown): Buffer {
  return encodeFrame(type, stream, JSON.stringify(value));
}

/** Bytes as frames of at most MAX_CHUNK_BYTES each (none for an empty buffer). */
export function encodeChunks(type: number, stream: number, data: Buffer): Buffer[] {
  return encodeAnyChunks(type, stream, data, MAX_CHUNK_BYTES);
}

/** PUT_FILE and FILE payloads: u32 length of a JSON header, the header, then the file's bytes. */
export function encodeFileBody(header: FileHeader, data: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(json.length, 0);
  return Buffer.concat([head, json, data]);
}

export function decodeFileBody(payload: Buffer): { header: FileHeader; data: Buffer } {
  if (payload.length < 4) throw new ProtocolError('file payload too short');
  const jsonLength = payload.readUInt32BE(0);
  if (4 + jsonLength > payload.length) throw new ProtocolError('file header runs past the payload');
  const header = JSON.parse(payload.subarray(4, 4 + jsonLength).toString('utf8')) as FileHeader;
  if (typeof header.path !== 'string') throw new ProtocolError('file header has no path');
  return { header, data: payload.subarray(4 + jsonLength) };
}

export function decodeJson<T>(frame: Frame): T {
  try {
    return JSON.parse(frame.payload.toString('utf8')) as T;
  } catch {
    throw new ProtocolError(`${messageTypeName(frame.type)} payload is not JSON`);
  }
}

/** Reassembles frames from arbitrary stream chunks. Throws ProtocolError on a bad version or length. */
export class FrameDecoder extends BaseFrameDecoder {
  constructor() {
    super(MAX_FRAME_BYTES);
  }
}
