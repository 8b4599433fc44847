/**
 * `kindling deploy --dir` follows the build's log; when that stream breaks mid-build (the server went away) it ends
 * with one `kindling: ...` line and exit 2, not a stack trace. The server is a stand-in that answers the deploy with
 * 202 and then cuts the log stream: the CLI's handling of a broken stream is the logic under test.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';

const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'kindling-cli-follow-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Answers PUT with 202 (build bld_x), then sends one log line of the build and, per `cut`, breaks or ends the stream. */
function standIn(cut: 'destroy' | 'end'): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.method === 'PUT') {
      request.resume();
      request.on('end', () => {
        const build = { id: 'bld_x', tenant: 'default', function: 'app', kind: 'npm', status: 'building', startedAtMs: 0 };
        response.writeHead(202, { 'content-type': 'application/json', location: '/v1/functions/app/builds/bld_x' });
        response.end(JSON.stringify({ name: 'app', status: 'building', build }));
      });
      return;
    }
    response.writeHead(200, { 'content-type': 'text/event-stream' });
    response.write(`event: log\ndata: ${JSON.stringify({ text: 'npm ci running' })}\n\n`, () => {
      if (cut === 'destroy') response.socket?.destroy();
      else response.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

for (const cut of ['destroy', 'end'] as const) {
  it(`ends with one kindling: line and exit 2 when the build log stream ${cut === 'destroy' ? 'breaks' : 'ends early'}`, async () => {
    writeFileSync(join(dir, 'index.js'), 'exports.handler = () => "hi";\n');
    writeFileSync(join(dir, 'package.json'), '{"name":"app","version":"1.0.0"}\n');
    const server = await standIn(cut);
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = execFile(process.execPath, [CLI, 'deploy', 'app', '--dir', dir, '--runtime', 'node', '--handler', 'index.js:handler', '--url', url], (error, _stdout, stderr) =>
          resolve({ code: error === null ? 0 : (child.exitCode ?? 1), stderr }),
        );
      });
      assert.equal(code, 2, stderr);
      const lines = stderr.trimEnd().split('\n');
      assert.match(lines.at(-1)!, /^kindling: STREAM_INTERRUPTED: /, stderr);
      assert.doesNotMatch(stderr, /^\s+at /m, `a stack trace was printed:\n${stderr}`);
      assert.match(stderr, /npm ci running/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
}
