/**
 * The resident agent for node handlers: the main process of a warm sandbox. Usage:
 *   node /.kindling/node-wrapper.js SOCKET MODULE HANDLER
 * It imports MODULE once (module-level code runs once per sandbox), connects to the host's unix SOCKET, says HELLO and
 * then serves invocations one at a time: the body arrives as a Buffer, the handler returns a string, a Buffer (or
 * Uint8Array) or a Promise of one. A throw becomes an ERROR frame (the invocation's exit code is 1). console output of
 * the handler travels as STDERR frames. No process is spawned per invocation. Answers carry no usage report (agent
 * version 3, see protocol.ts): the host meters calls from the sandbox's cgroup.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AGENT_VERSION, FrameDecoder, FrameType, encodeBody, encodeFrame, type Frame } from './protocol.js';

const [socketPath, modulePath, handlerName] = process.argv.slice(2);

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : `thrown: ${String(error)}`;
}

async function main(): Promise<void> {
  if (!socketPath || !modulePath || !handlerName) throw new Error('usage: node-wrapper SOCKET MODULE HANDLER');
  // Connect first, load the user's code second: the host then tells a platform failure (no connection) from user code
  // that kills the process while loading (connection, then no HELLO).
  const socket = net.connect(socketPath);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.setNoDelay(true);
  socket.on('error', () => process.exit(1));
  socket.on('close', () => process.exit(0));

  let current = 0;
  const log = (text: string): void => {
    if (current !== 0) socket.write(encodeFrame(FrameType.STDERR, current, text));
    else process.stderr.write(text);
  };
  const format = (args: unknown[]): string => args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a) ?? String(a))).join(' ') + '\n';
  for (const method of ['log', 'info', 'warn', 'error', 'debug'] as const) console[method] = (...args: unknown[]) => log(format(args));

  // A generic agent gets its code later in one LOAD frame (the module loader is already warm by then).
  let target = { modulePath, handlerName };
  if (modulePath === '-') {
    socket.write(encodeFrame(FrameType.HELLO, 0, JSON.stringify({ version: AGENT_VERSION, runtime: 'node', pid: process.pid, generic: true })));
    const load = await nextLoad(socket);
    for (const key of Object.keys(process.env)) delete process.env[key];
    Object.assign(process.env, load.env);
    const dir = mkdtempSync(join(tmpdir(), 'kindling-fn-'));
    // A TypeScript runtime names its file (handler.ts); a plain name only, never a path.
    const name = typeof load.file === 'string' && /^handler\.[a-z]{1,4}$/.test(load.file) ? load.file : load.esModule ? 'handler.mjs' : 'handler.cjs';
    const file = join(dir, name);
    writeFileSync(file, load.code);
    target = { modulePath: file, handlerName: load.handler };
  }

  let handler: (body: Buffer) => unknown;
  try {
    const mod = (await import(pathToFileURL(target.modulePath).href)) as Record<string, unknown>;
    const found = mod[target.handlerName] ?? (mod.default as Record<string, unknown> | undefined)?.[target.handlerName];
    if (typeof found !== 'function') throw new Error(`the module does not export a function named "${target.handlerName}"`);
    handler = found as (body: Buffer) => unknown;
  } catch (error) {
    socket.end(encodeFrame(FrameType.ERROR, 0, `loading the module failed: ${describe(error)}`));
    return;
  }
  socket.write(encodeFrame(FrameType.HELLO, 0, JSON.stringify({ version: AGENT_VERSION, runtime: 'node', pid: process.pid })));

  const decoder = new FrameDecoder();
  let body: Buffer[] = [];
  // The frames of an answer in one write: one syscall and one wake-up of the host instead of one per frame.
  const writeAll = (frames: Buffer[]): void => {
    socket.cork();
    for (const frame of frames) socket.write(frame);
    socket.uncork();
  };
  const run = async (id: number, input: Buffer): Promise<void> => {
    current = id;
    try {
      const value = await handler(input);
      const out = typeof value === 'string' ? Buffer.from(value, 'utf8') : value instanceof Uint8Array ? Buffer.from(value.buffer, value.byteOffset, value.byteLength) : value === undefined || value === null ? Buffer.alloc(0) : Buffer.from(String(value), 'utf8');
      writeAll(encodeBody(FrameType.RESULT_CHUNK, FrameType.RESULT_END, id, out));
    } catch (error) {
      writeAll([encodeFrame(FrameType.ERROR, id, describe(error))]);
    } finally {
      current = 0;
    }
  };
  socket.on('data', (chunk: Buffer) => {
    let frames: Frame[];
    try {
      frames = decoder.push(chunk);
    } catch (error) {
      process.stderr.write(`agent: ${describe(error)}\n`);
      process.exit(1);
    }
    for (const frame of frames) {
      switch (frame.type) {
        case FrameType.INVOKE:
          body = [];
          setTraceparent(frame.payload);
          break;
        case FrameType.BODY_CHUNK:
          body.push(frame.payload);
          break;
        case FrameType.BODY_END:
          void run(frame.id, Buffer.concat(body));
          body = [];
          break;
        case FrameType.PING:
          socket.write(encodeFrame(FrameType.PONG, frame.id));
          break;
        default:
          break;
      }
    }
  });
}

/**
 * INVOKE's optional JSON payload names the call's trace ({traceparent}): the handler sees it as process.env.TRACEPARENT
 * for this call (a warm sandbox serves many calls, so it changes per call; absent: unset).
 */
function setTraceparent(payload: Buffer): void {
  let traceparent: unknown;
  try {
    traceparent = payload.length === 0 ? undefined : (JSON.parse(payload.toString('utf8')) as { traceparent?: unknown }).traceparent;
  } catch {
    traceparent = undefined;
  }
  if (typeof traceparent === 'string') process.env.TRACEPARENT = traceparent;
  else delete process.env.TRACEPARENT;
}

interface LoadRequest {
  code: string;
  handler: string;
  env: Record<string, string>;
  esModule: boolean;
  file?: string;
}

/** Waits for the LOAD frame of a generic agent. */
function nextLoad(socket: net.Socket): Promise<LoadRequest> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder();
    const onData = (chunk: Buffer): void => {
      for (const frame of decoder.push(chunk)) {
        if (frame.type !== FrameType.LOAD) continue;
        socket.off('data', onData);
        try {
          resolve(JSON.parse(frame.payload.toString('utf8')) as LoadRequest);
        } catch (error) {
          reject(error as Error);
        }
        return;
      }
    };
    socket.on('data', onData);
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`agent: ${describe(error)}\n`);
  process.exit(1);
});
