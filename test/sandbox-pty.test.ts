/**
 * Terminals in persistent sandboxes (GET /v1/sandboxes/ID/pty) on the sandbox executor (real bubblewrap), through the
 * TypeScript SDK against a started server: the pty is the sandbox's own (stty sees the size given, resize changes it),
 * input and output, Ctrl-C through the line discipline, the shell's exit code, other tenants, images without python3,
 * and nothing left running when the socket closes.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { ConflictError, Kindling, NotFoundError, type PtyHandle } from '@kindling/sdk';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const dockerUnavailable = await dockerUnavailableReason();
const CLI = new URL('../src/main.js', import.meta.url).pathname;

/** The CLI as a child process with a clean environment: its output as it comes, `input` for its stdin, `done` its exit. */
function cli(args: string[], env: Record<string, string>) {
  const child = spawn('node', [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  const run = { stdout: '', stderr: '', input: child.stdin, done: new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1))) };
  child.stdout.on('data', (chunk: Buffer) => (run.stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (run.stderr += chunk.toString()));
  return run;
}
const ADMIN = 'admin-key-for-sandbox-pty-test-0123456';

function processesWith(marker: string): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\s*(\d+) (.*)$/.exec(line))
    .filter((match) => match !== null && match[2]!.trim() === marker)
    .map((match) => Number(match![1]));
}

/** Host pids of terminal relays (python3 -c RELAY ...) still running. */
function relays(): number[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes('python3 -c import os,sys,pty'))
    .map((line) => Number(line.trim().split(' ')[0]));
}

/** A terminal whose output is collected as text; `until(re)` waits for it in the output after `from`. */
function open(create: (options: { cols: number; rows: number; command?: string[]; onData: (data: Uint8Array) => void }) => PtyHandle, cols: number, rows: number, command?: string[]) {
  let text = '';
  const decoder = new TextDecoder();
  const pty = create({ cols, rows, ...(command ? { command } : {}), onData: (data) => (text += decoder.decode(data, { stream: true })) });
  return {
    pty,
    get text() {
      return text;
    },
    async until(pattern: RegExp, from = 0, what = String(pattern)): Promise<string> {
      await waitFor(async () => pattern.test(text.slice(from)), 15_000, `${what} in the terminal output; got ${JSON.stringify(text.slice(from).slice(-400))}`);
      return text.slice(from);
    },
  };
}

describe('sandbox pty (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let k: Kindling;
  let key = '';

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    key = (await admin.tenants.create('sbx-pty')).apiKey;
    k = new Kindling({ url: server.url, apiKey: key });
  });
  after(async () => {
    await server?.stop();
    assert.deepEqual(relays(), [], 'no terminal relay outlives the server');
  });

  test('a terminal: stty sees the size, resize changes it, echo, Ctrl-C interrupts sleep and the shell goes on, exit 3 is the exit code', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      const t = open(sb.pty.create, 91, 27);
      await t.pty.started;
      await t.pty.write('stty size\r');
      await t.until(/[\r\n]27 91\r\n/, 0, 'stty size before the resize');
      let mark = t.text.length;
      await t.pty.resize(120, 40);
      await t.pty.write('stty size\r');
      await t.until(/[\r\n]40 120\r\n/, mark, 'stty size after the resize');
      mark = t.text.length;
      await t.pty.write('echo hi\r');
      await t.until(/[\r\n]hi\r\n/, mark, 'the output of echo hi');

      const sleeper = `sleep 100${Math.floor(Math.random() * 9000) + 1000}`;
      await t.pty.write(`${sleeper}\r`);
      await waitFor(async () => processesWith(sleeper).length > 0, 10_000, 'the sleep runs');
      mark = t.text.length;
      await t.pty.write('\x03');
      await waitFor(async () => processesWith(sleeper).length === 0, 10_000, 'Ctrl-C ended the sleep');
      await t.pty.write('echo back$((40+2))\r');
      await t.until(/back42/, mark, 'the shell answers after Ctrl-C');
      assert.equal((await sb.commands.run(['echo', 'alive'])).stdout, 'alive\n', 'the sandbox lives on');

      await t.pty.write('exit 3\r');
      assert.deepEqual(await t.pty.wait(), { exitCode: 3 });
    } finally {
      await sb.kill();
    }
  });

  test('a browser-style client offers the key as a subprotocol: the terminal opens, the answer never names the key; a wrong key, another route or a proxied port do not take it', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    const base = server.url.replace(/^http/, 'ws');
    const keyProtocol = (value: string): string => `kindling.key.${Buffer.from(value).toString('base64url')}`;
    /** Opens a socket; resolves with its answer: the protocol chosen, or the HTTP status it was refused with. */
    const connect = (path: string, protocols: string[]): Promise<{ socket: WebSocket; protocol: string } | { status: number }> =>
      new Promise((resolve, reject) => {
        const socket = new WebSocket(`${base}${path}`, protocols);
        socket.once('open', () => resolve({ socket, protocol: socket.protocol }));
        socket.once('unexpected-response', (_request, response) => {
          resolve({ status: response.statusCode ?? 0 });
          response.resume();
          socket.terminate();
        });
        socket.once('error', reject);
      });
    try {
      const opened = await connect(`/v1/sandboxes/${sb.id}/pty`, ['kindling.pty', keyProtocol(key)]);
      assert.ok('socket' in opened, `refused: ${JSON.stringify(opened)}`);
      assert.equal(opened.protocol, 'kindling.pty');
      const messages: string[] = [];
      const closed = new Promise<void>((resolve) => opened.socket.once('close', () => resolve()));
      opened.socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) messages.push(data.toString());
      });
      opened.socket.send(JSON.stringify({ cols: 80, rows: 24, command: ['sh', '-c', 'exit 7'] }));
      await closed;
      assert.deepEqual(messages.map((m) => JSON.parse(m) as unknown), [{ type: 'started' }, { type: 'exit', exitCode: 7 }]);

      // Offered first, the key is still not the protocol answered (an answer is visible to whatever sits in between).
      const keyFirst = await connect(`/v1/sandboxes/${sb.id}/pty`, [keyProtocol(key), 'kindling.pty']);
      assert.ok('socket' in keyFirst, `refused: ${JSON.stringify(keyFirst)}`);
      assert.equal(keyFirst.protocol, 'kindling.pty');
      keyFirst.socket.terminate();
      assert.deepEqual(await connect(`/v1/sandboxes/${sb.id}/pty`, ['kindling.pty', keyProtocol('kdl_wrong')]), { status: 401 });
      assert.deepEqual(await connect(`/v1/sandboxes/${sb.id}/pty`, ['kindling.pty']), { status: 401 });
      // The ports route passes subprotocols on to the sandbox's server: it must not take (and so invite) a key there.
      assert.deepEqual(await connect(`/v1/sandboxes/${sb.id}/ports/8080/`, ['chat', keyProtocol(key)]), { status: 401 });
      // A plain HTTP request with the header is not a WebSocket: only Authorization counts.
      const plain = await fetch(`${server.url}/v1/sandboxes/${sb.id}`, { headers: { 'sec-websocket-protocol': `kindling.pty, ${keyProtocol(key)}` } });
      assert.equal(plain.status, 401);
    } finally {
      await sb.kill();
    }
  });

  test('a client that reads nothing holds up the terminal, not the server: the program blocks once ~1 MiB waits for it', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    // Writes 64 KiB blocks to the terminal as fast as it can and records how many bytes it got rid of.
    const flood = 'import os\nn = 0\nwhile True:\n    os.write(1, b"x" * 65536)\n    n += 65536\n    open("/tmp/flooded", "w").write(str(n))';
    const socket = new WebSocket(`${server.url.replace(/^http/, 'ws')}/v1/sandboxes/${sb.id}/pty`, { headers: { authorization: `Bearer ${key}` } });
    try {
      await new Promise<void>((resolve, reject) => socket.once('open', () => resolve()).once('error', reject));
      // The client stops reading its socket at once: what the server does not hold back piles up in the server.
      (socket as unknown as { _socket: { pause(): void } })._socket.pause();
      socket.send(JSON.stringify({ cols: 80, rows: 24, command: ['python3', '-c', flood] }));
      const flooded = async (): Promise<number> => Number((await sb.commands.run(['sh', '-c', 'cat /tmp/flooded 2>/dev/null || echo 0'])).stdout.trim());
      let last = -1;
      // Blocked: the count stops moving (each check reads it twice, a command round trip apart, and once more later).
      await waitFor(
        async () => {
          const now = await flooded();
          const still = now > 0 && now === last;
          last = now;
          return still;
        },
        60_000,
        'the flooding program to block',
      );
      assert.ok(last < 64 * 1024 * 1024, `the program wrote ${last} bytes to a client that read nothing`);
    } finally {
      socket.terminate();
      await sb.kill();
    }
  });

  test('a given command runs in the terminal (a tty) with its env; its exit code ends the socket', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      const t = open(sb.pty.create, 80, 24, ['sh', '-c', 'test -t 0 && test -t 1 && echo "tty $TERM"; exit 7']);
      assert.deepEqual(await t.pty.wait(), { exitCode: 7 });
      assert.match(t.text, /tty xterm-256color/);
    } finally {
      await sb.kill();
    }
  });

  test('closing the socket kills the terminal\'s process tree; the sandbox lives on', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    try {
      const sleeper = `sleep 200${Math.floor(Math.random() * 9000) + 1000}`;
      const t = open(sb.pty.create, 80, 24, ['sh', '-c', `${sleeper}; echo never`]);
      await t.pty.started;
      await waitFor(async () => processesWith(sleeper).length > 0, 10_000, 'the sleep runs');
      t.pty.kill();
      await waitFor(async () => processesWith(sleeper).length === 0, 10_000, 'the sleep was killed with the socket');
      await waitFor(async () => relays().length === 0, 10_000, 'no terminal relay is left');
      await assert.rejects(t.pty.wait());
      assert.equal((await sb.commands.run(['echo', 'alive'])).stdout, 'alive\n');
    } finally {
      await sb.kill();
    }
  });

  test('CLI: exec streams output live; exec --background prints the id; ps, logs (--follow), kill; shell relays a terminal and exits with its code', async () => {
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    const key = (await admin.tenants.create('sbx-pty-cli')).apiKey;
    const env = { KINDLING_URL: server.url, KINDLING_API_KEY: key };
    const sb = await new Kindling({ url: server.url, apiKey: key }).sandboxes.create({ runtime: 'python' });
    try {
      // exec: "first" is printed while the command still waits for a file the test writes only after seeing it.
      const streamed = cli(['sandbox', 'exec', sb.id, '--', 'sh', '-c', 'echo first; while [ ! -f /tmp/go ]; do sleep 0.02; done; echo second; exit 4'], env);
      await waitFor(async () => streamed.stdout === 'first\n', 15_000, 'exec printed its first line while running').catch((error: Error) => {
        throw new Error(`${error.message}; stdout ${JSON.stringify(streamed.stdout)}, stderr ${JSON.stringify(streamed.stderr)}`);
      });
      await sb.commands.run(['touch', '/tmp/go']);
      assert.equal(await streamed.done, 4);
      assert.equal(streamed.stdout, 'first\nsecond\n');

      // --background, ps, logs, kill.
      const sleeper = `sleep 300${Math.floor(Math.random() * 9000) + 1000}`;
      const started = cli(['sandbox', 'exec', '--background', sb.id, '--', 'sh', '-c', `echo up; ${sleeper}`], env);
      assert.equal(await started.done, 0, started.stderr);
      const cid = started.stdout.trim();
      assert.match(cid, /^cmd_/);
      const ps = cli(['sandbox', 'ps', sb.id], env);
      assert.equal(await ps.done, 0, ps.stderr);
      assert.match(ps.stdout, new RegExp(`${cid}\\s+\\d+\\s+running\\s+sh -c echo up`));
      const notYet = cli(['sandbox', 'logs', sb.id, cid], env);
      assert.notEqual(await notYet.done, 0);
      assert.match(notYet.stderr, /still running: add --follow/);
      const follow = cli(['sandbox', 'logs', '--follow', sb.id, cid], env);
      await waitFor(async () => follow.stdout === 'up\n', 15_000, 'logs --follow printed the kept output');
      const killed = cli(['sandbox', 'kill', sb.id, cid], env);
      assert.equal(await killed.done, 0, killed.stderr);
      assert.equal(killed.stdout, `${cid} exit 137\n`);
      assert.equal(await follow.done, 137);
      await waitFor(async () => processesWith(sleeper).length === 0, 10_000, 'the killed command is gone');
      const logs = cli(['sandbox', 'logs', sb.id, cid], env);
      assert.equal(await logs.done, 137);
      assert.equal(logs.stdout, 'up\n');

      // shell (stdin not a TTY here: no raw mode, the bytes still go through the sandbox's terminal).
      const shell = cli(['sandbox', 'shell', sb.id, '--', 'sh', '-c', 'read x; test -t 0 && echo "got $x on a tty"; exit 5'], env);
      shell.input.write('yes\n');
      assert.equal(await shell.done, 5, shell.stderr);
      assert.match(shell.stdout, /got yes on a tty/);
    } finally {
      await sb.kill();
    }
  });

  test("another tenant's sandbox is 404; an image without python3 is 409 SANDBOX_PTY_UNSUPPORTED; a bad first message is refused", async () => {
    const sb = await k.sandboxes.create({ runtime: 'python' });
    const bare = await k.sandboxes.create({ runtime: 'bash' });
    try {
      const admin = new Kindling({ url: server.url, apiKey: ADMIN });
      const other = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('sbx-pty-other')).apiKey });
      const stranger = other.sandboxes.pty(sb.id, { cols: 80, rows: 24 });
      await assert.rejects(stranger.wait(), (error: unknown) => error instanceof NotFoundError && error.code === 'SANDBOX_NOT_FOUND');
      const nope = k.sandboxes.pty(bare.id, { cols: 80, rows: 24 });
      await assert.rejects(nope.wait(), (error: unknown) => error instanceof ConflictError && error.code === 'SANDBOX_PTY_UNSUPPORTED');
      const wrong = k.sandboxes.pty(sb.id, { cols: 0, rows: 24 });
      await assert.rejects(wrong.wait(), (error: unknown) => (error as { code?: string }).code === 'VALIDATION_FAILED');
    } finally {
      await Promise.all([sb.kill(), bare.kill()]);
    }
  });
});

describe('sandbox pty (docker executor)', { skip: dockerUnavailable ?? false }, () => {
  let server: TestServer;
  let k: Kindling;

  before(async () => {
    server = await startTestServer({ executor: 'docker', adminKey: ADMIN });
    const admin = new Kindling({ url: server.url, apiKey: ADMIN });
    k = new Kindling({ url: server.url, apiKey: (await admin.tenants.create('sbx-pty-docker')).apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  test('a terminal in a container: stty sees the size, Ctrl-C interrupts sleep, closing the socket kills the tree, exit 3 is the exit code', async () => {
    const sb = await k.sandboxes.create({ runtime: 'python', executor: 'docker' });
    try {
      const t = open(sb.pty.create, 91, 27);
      await t.pty.started;
      await t.pty.write('stty size\r');
      await t.until(/[\r\n]27 91\r\n/, 0, 'stty size');
      let mark = t.text.length;
      await t.pty.write('sleep 100\r');
      await waitFor(async () => (await sb.commands.run(['sh', '-c', 'ps -eo args= 2>/dev/null || cat /proc/[0-9]*/cmdline | tr "\\0" " "'])).stdout.includes('sleep 100'), 15_000, 'the sleep runs');
      mark = t.text.length;
      await t.pty.write('\x03');
      await t.pty.write('echo back$((40+2))\r');
      await t.until(/back42/, mark, 'the shell answers after Ctrl-C');
      await t.pty.write('exit 3\r');
      assert.deepEqual(await t.pty.wait(), { exitCode: 3 });

      const held = open(sb.pty.create, 80, 24, ['sleep', '201']);
      await held.pty.started;
      await waitFor(async () => (await sb.commands.run(['sh', '-c', 'cat /proc/[0-9]*/cmdline | tr "\\0" " "'])).stdout.includes('sleep 201'), 15_000, 'the held sleep runs');
      held.pty.kill();
      await waitFor(async () => !(await sb.commands.run(['sh', '-c', 'cat /proc/[0-9]*/cmdline | tr "\\0" " "'])).stdout.includes('sleep 201'), 15_000, 'the sleep died with the socket');
    } finally {
      await sb.kill();
    }
  });
});
