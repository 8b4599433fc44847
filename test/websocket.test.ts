/**
 * GET /v1/execute/ws against a real server on the sandbox executor: an interactive program answers a line before its
 * stdin ends and exits after stdin_end; closing the socket kills the execution and frees the sandbox; a bad spec is an
 * error message and close 1008; without the API key the upgrade is refused with 401.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { AuthenticationError, ConnectionError, Kindling, ValidationError } from '@kindling/sdk';
import { sample } from './helpers/prom-text.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const sandboxMissing = await sandboxUnavailableReason();
const API_KEY = 'ws-test-key-0123456789';
const UPPER = ['python3', '-u', '-c', 'import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)'];

interface Message {
  type: string;
  [key: string]: unknown;
}

/** A connected client that queues the server's messages and lets the test wait for the next matching one. */
class Client {
  readonly messages: Message[] = [];
  closed: { code: number; reason: string } | null = null;
  private waiters: (() => void)[] = [];

  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, 'the server sends text messages only');
      this.messages.push(JSON.parse(String(data)) as Message);
      this.wake();
    });
    socket.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
  }

  static open(url: string, headers: Record<string, string> = {}): Promise<Client> {
    const socket = new WebSocket(url.replace(/^http/, 'ws') + '/v1/execute/ws', { headers });
    return new Promise((resolve, reject) => {
      socket.once('open', () => resolve(new Client(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** Resolves once `condition` holds over the messages so far (or rejects on close/timeout). */
  async until<T>(condition: (messages: Message[]) => T | undefined, what: string, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = condition(this.messages);
      if (found !== undefined) return found;
      if (this.closed) throw new Error(`closed (${this.closed.code}) before ${what}: ${JSON.stringify(this.messages)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(this.messages)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async closedWith(): Promise<{ code: number; reason: string }> {
    await this.until((messages) => (this.closed ? messages : undefined), 'close').catch(() => undefined);
    if (!this.closed) await new Promise((resolve) => this.socket.once('close', resolve));
    return this.closed!;
  }
}

const stdoutText = (messages: Message[]): string => messages.filter((m) => m.type === 'stdout').map((m) => String(m.data)).join('');

describe('WebSocket executions (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  const auth = { authorization: `Bearer ${API_KEY}` };
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: API_KEY });
  });
  after(async () => {
    await server?.stop();
  });

  const inFlight = async (): Promise<number> => sample(await (await fetch(`${server.url}/metrics`, { headers: auth })).text(), 'kindling_executions_in_flight');

  it('an interactive program answers a line before stdin ends, then exits 0 after stdin_end', { timeout: 60_000 }, async () => {
    const client = await Client.open(server.url, auth);
    client.socket.send(JSON.stringify({ image: 'kindling/python', command: UPPER, timeoutMs: 30_000 }));
    const started = await client.until((messages) => messages.find((m) => m.type === 'started'), 'started');
    assert.match(String(started.id), /.+/);

    client.socket.send(Buffer.from('hello\n'));
    await client.until((messages) => (stdoutText(messages).includes('HELLO\n') ? true : undefined), 'the first answer');
    assert.equal(client.messages.some((m) => m.type === 'exit'), false, 'answered while still running');

    client.socket.send(Buffer.from('second line\n'));
    await client.until((messages) => (stdoutText(messages).includes('SECOND LINE\n') ? true : undefined), 'the second answer');
    client.socket.send(JSON.stringify({ type: 'stdin_end' }));

    const exit = await client.until((messages) => messages.find((m) => m.type === 'exit'), 'exit');
    assert.equal(exit.exitCode, 0, JSON.stringify(exit));
    assert.equal(exit.id, started.id);
    assert.equal(exit.stdout, 'HELLO\nSECOND LINE\n');
    assert.deepEqual(await client.closedWith(), { code: 1000, reason: '' });
  });

  it('a client that closes the socket kills the execution and frees the sandbox', { timeout: 60_000 }, async () => {
    const client = await Client.open(server.url, auth);
    client.socket.send(JSON.stringify({ image: 'kindling/base', command: ['sh', '-c', 'echo ready; sleep 300'], timeoutMs: 120_000 }));
    await client.until((messages) => (stdoutText(messages).includes('ready') ? true : undefined), 'ready');
    assert.equal(await inFlight(), 1);
    client.socket.close();
    await waitFor(async () => (await inFlight()) === 0, 20_000, 'the in-flight gauge back to 0');
  });

  it('a bad spec is an error message and close 1008; nothing runs', async () => {
    const client = await Client.open(server.url, auth);
    client.socket.send(JSON.stringify({ image: 'kindling/base', command: ['cat'], stdin: 'not here' }));
    const error = await client.until((messages) => messages.find((m) => m.type === 'error'), 'error');
    assert.equal((error.error as { code: string }).code, 'VALIDATION_FAILED');
    assert.equal((await client.closedWith()).code, 1008);

    const notJson = await Client.open(server.url, auth);
    notJson.socket.send('{nope');
    const error2 = await notJson.until((messages) => messages.find((m) => m.type === 'error'), 'error');
    assert.equal((error2.error as { code: string }).code, 'INVALID_JSON');
    assert.equal((await notJson.closedWith()).code, 1008);

    const binaryFirst = await Client.open(server.url, auth);
    binaryFirst.socket.send(Buffer.from('stdin before the spec'));
    const error4 = await binaryFirst.until((messages) => messages.find((m) => m.type === 'error'), 'error');
    assert.equal((error4.error as { code: string }).code, 'VALIDATION_FAILED');
    assert.equal((await binaryFirst.closedWith()).code, 1008);

    // A spec that validates but cannot start (unknown image): an error before `started`, still a client error.
    const unknown = await Client.open(server.url, auth);
    unknown.socket.send(JSON.stringify({ image: 'kindling/nope', command: ['true'] }));
    const error3 = await unknown.until((messages) => messages.find((m) => m.type === 'error'), 'error');
    assert.equal((error3.error as { code: string }).code, 'UNKNOWN_IMAGE');
    assert.equal(unknown.messages.some((m) => m.type === 'started'), false);
    assert.equal((await unknown.closedWith()).code, 1008);
  });

  it('the SDK: interactive() answers a line before stdin ends, then resolves with the result', { timeout: 60_000 }, async () => {
    const client = new Kindling({ url: server.url, apiKey: API_KEY });
    let stdout = '';
    let sawAnswer: () => void = () => undefined;
    const answered = new Promise<void>((resolve) => (sawAnswer = resolve));
    const run = client.interactive(
      { image: 'kindling/python', command: UPPER, timeoutMs: 30_000 },
      {
        onStdout: (text) => {
          stdout += text;
          if (stdout.includes('HELLO\n')) sawAnswer();
        },
      },
    );
    const started = await run.started;
    assert.equal(started.executor, 'sandbox');
    await run.write('hello\n');
    await answered;
    await run.write(new TextEncoder().encode('bytes too\n'));
    await run.end();
    const result = await run.result;
    assert.equal(result.exitCode, 0);
    assert.equal(stdout, 'HELLO\nBYTES TOO\n');
    assert.equal(result.id, started.id);
  });

  it('the SDK: errors are typed (a bad spec, a missing key) and close() kills the run', { timeout: 60_000 }, async () => {
    const client = new Kindling({ url: server.url, apiKey: API_KEY });
    const bad = client.interactive({ image: 'kindling/nope', command: ['true'] });
    const error = await bad.result.then(() => null, (e: unknown) => e);
    assert.ok(error instanceof ValidationError, String(error));
    assert.equal(error.code, 'UNKNOWN_IMAGE');
    await assert.rejects(bad.started, ValidationError);

    const anonymous = new Kindling({ url: server.url }).interactive({ image: 'kindling/base', command: ['true'] });
    await assert.rejects(anonymous.result, AuthenticationError);

    const endless = client.interactive({ image: 'kindling/base', command: ['sleep', '60'] });
    await endless.started;
    await waitFor(async () => (await inFlight()) >= 1, 10_000, 'the run to be in flight');
    endless.close();
    await assert.rejects(endless.result, ConnectionError);
    await waitFor(async () => (await inFlight()) === 0, 20_000, 'the killed run to be gone');
  });

  it('the route is in the OpenAPI document with its protocol', async () => {
    const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as { paths: Record<string, { get?: { description?: string; responses?: Record<string, unknown> } }> };
    const route = doc.paths['/v1/execute/ws']?.get;
    assert.ok(route, 'GET /v1/execute/ws is documented');
    assert.match(route.description ?? '', /stdin_end/);
    assert.ok(route.responses?.['101'] && route.responses['401']);
  });

  it('the upgrade needs the API key: 401 without it', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const socket = new WebSocket(server.url.replace(/^http/, 'ws') + '/v1/execute/ws');
      socket.once('unexpected-response', (_request, response) => {
        resolve(response.statusCode ?? 0);
        socket.terminate();
      });
      socket.once('open', () => reject(new Error('the upgrade succeeded without a key')));
      socket.once('error', () => undefined);
    });
    assert.equal(status, 401);
    const wrong = await new Promise<number>((resolve) => {
      const socket = new WebSocket(server.url.replace(/^http/, 'ws') + '/v1/execute/ws', { headers: { authorization: 'Bearer wrong' } });
      socket.once('unexpected-response', (_request, response) => {
        resolve(response.statusCode ?? 0);
        socket.terminate();
      });
      socket.once('error', () => undefined);
    });
    assert.equal(wrong, 401);
  });
});
