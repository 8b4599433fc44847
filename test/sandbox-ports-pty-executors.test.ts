/**
 * Ports and terminals of persistent sandboxes on the gvisor and microvm executors, through the API with real
 * sandboxes: an HTTP server started in the sandbox (which has no network) answers through
 * /v1/sandboxes/ID/ports/PORT/..., a port nobody listens on is SANDBOX_PORT_UNREACHABLE, no relay outlives its
 * connection, and a terminal
 * (GET /v1/sandboxes/ID/pty) has the size given, follows a resize, passes Ctrl-C to the foreground process and ends
 * with the shell's exit code. Skipped with the reason where an executor is not available here.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Kindling, type PtyHandle } from '@kindling/sdk';
import { gvisorUnavailableReason, microvmUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const ADMIN = 'admin-key-for-sandbox-ports-pty-executors-0123456789';

/** An HTTP server on 127.0.0.1:8000 in the sandbox, answering every GET with the path and a file's content. */
const SERVER = `import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('path=%s file=%s' % (self.path, open('/work/name').read().strip())).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', 8000), H).serve_forever()`;

const cases = [
  { executor: 'gvisor' as const, unavailable: await gvisorUnavailableReason(), timeoutMs: 120_000 },
  // A boot under TCG takes 5 s on an idle host, much more on a busy one.
  { executor: 'microvm' as const, unavailable: await microvmUnavailableReason(), timeoutMs: 300_000 },
];

for (const { executor, unavailable, timeoutMs } of cases) {
  describe(`ports and terminals through the API (${executor} executor)`, { skip: unavailable ?? false, timeout: timeoutMs * 3 }, () => {
    let server: TestServer;
    let client: Kindling;

    before(async () => {
      // The microvm tests' assets dir may be a private build (the guest's port helper and devpts mount are on its agent disk).
      const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR;
      server = await startTestServer({ executor, adminKey: ADMIN, ...(executor === 'microvm' && assetsDir ? { microvm: { assetsDir } } : {}) });
      const { apiKey } = await new Kindling({ url: server.url, apiKey: ADMIN }).tenants.create(`ports-pty-${executor}`);
      client = new Kindling({ url: server.url, apiKey, timeoutMs });
    });
    after(async () => {
      await server?.stop();
    });

    test('a server in the sandbox answers through /v1/sandboxes/ID/ports/PORT/; nothing listening is SANDBOX_PORT_UNREACHABLE', { timeout: timeoutMs }, async () => {
      const sandbox = await client.sandboxes.create({ image: 'kindling/python', executor, limits: { memoryMb: 256 } });
      try {
        const idle = await sandbox.fetch(8000, '/').then(
          () => null,
          (error: unknown) => error,
        );
        assert.equal((idle as { code?: string } | null)?.code, 'SANDBOX_PORT_UNREACHABLE', `nothing listens yet: ${String(idle)}`);
        assert.equal((await sandbox.commands.run(['sh', '-c', 'echo inside > /work/name'])).exitCode, 0);
        assert.equal((await sandbox.commands.run(['sh', '-c', `python3 -c "$0" >/dev/null 2>&1 &`, SERVER])).exitCode, 0);
        let body = '';
        await waitFor(
          async () => {
            try {
              const response = await sandbox.fetch(8000, '/hello?x=1');
              body = await response.text();
              return response.status === 200;
            } catch (error) {
              // Not listening yet: asked again shortly.
              if ((error as { code?: string }).code !== 'SANDBOX_PORT_UNREACHABLE') throw error;
              return false;
            }
          },
          timeoutMs / 2,
          'the server in the sandbox to answer',
        );
        assert.equal(body, 'path=/hello?x=1 file=inside');
        // A second request, a new connection: each one is relayed on its own.
        assert.equal(await (await sandbox.fetch(8000, '/again')).text(), 'path=/again file=inside');
        // Each connection's relay ends with it: nothing of the proxy stays running in the sandbox.
        const relays = async (): Promise<string> =>
          (await sandbox.commands.run(['sh', '-c', 'for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr "\\0" " "; echo; done'])).stdout
            .split('\n')
            .filter((line) => line.includes('kindling-port'))
            .join('\n');
        let left = '';
        await waitFor(async () => (left = await relays()) === '', timeoutMs / 4, `no port relay left in the sandbox (${left})`);
      } finally {
        await sandbox.kill();
      }
    });

    test('a terminal: stty sees the size, resize changes it, Ctrl-C interrupts sleep and the shell goes on, exit 3 is the exit code', { timeout: timeoutMs }, async () => {
      const sandbox = await client.sandboxes.create({ image: 'kindling/python', executor, limits: { memoryMb: 256 } });
      try {
        let text = '';
        const decoder = new TextDecoder();
        const pty: PtyHandle = sandbox.pty.create({ cols: 91, rows: 27, onData: (data) => (text += decoder.decode(data, { stream: true })) });
        const until = (pattern: RegExp, from: number, what: string): Promise<void> =>
          waitFor(async () => pattern.test(text.slice(from)), timeoutMs / 4, `${what} in the terminal output; got ${JSON.stringify(text.slice(from).slice(-400))} (all: ${JSON.stringify(text.slice(-600))})`);
        await pty.started;
        await pty.write('stty size\r');
        await until(/[\r\n]27 91\r\n/, 0, 'stty size before the resize');
        let mark = text.length;
        await pty.resize(120, 40);
        await pty.write('stty size\r');
        await until(/[\r\n]40 120\r\n/, mark, 'stty size after the resize');
        mark = text.length;
        const sleeping = async (): Promise<boolean> =>
          (await sandbox.commands.run(['sh', '-c', 'for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr "\\0" " "; echo; done'])).stdout.includes('sleep 1000');
        await pty.write('sleep 1000\r');
        // The sleep runs (seen from a command beside the terminal), then Ctrl-C ends it and the shell prompts again.
        await waitFor(sleeping, timeoutMs / 4, 'the sleep runs');
        await pty.write('\x03');
        await waitFor(async () => !(await sleeping()), timeoutMs / 4, 'Ctrl-C ended the sleep');
        mark = text.length;
        await pty.write('echo back$((40+2))\r');
        await until(/back42/, mark, 'the shell answers after Ctrl-C');
        await pty.write('exit 3\r');
        assert.deepEqual(await pty.wait(), { exitCode: 3 });
      } finally {
        await sandbox.kill();
      }
    });
  });
}
