/**
 * The `go` runtime end to end on a real server: Go code runs with `go run` in kindling/go (Debian trixie's Go) against
 * the standard library compiled into the image's build cache; compile errors and exit codes are the user's result; a
 * command function reads its input on stdin; a bundle that is a Go module with a package of its own runs `go run .`
 * with no network; a persistent sandbox has the toolchain. On the sandbox executor, and on docker where the engine is
 * reachable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const directory = directoryMaker('kindling-go-');
const tar = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);

const JSON_PROGRAM = `package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
)

func main() {
	out, _ := json.Marshal(map[string]any{"answer": 6 * 7, "go": runtime.Version()[:6]})
	fmt.Println(string(out))
	fmt.Fprintln(os.Stderr, "to stderr")
	os.Exit(3)
}
`;

const UPPER_PROGRAM = `package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(strings.ToUpper(in.Text()))
	}
}
`;

for (const executor of ['sandbox', 'docker'] as const) {
  const unavailable = executor === 'sandbox' ? await sandboxUnavailableReason() : await dockerUnavailableReason();
  describe(`the go runtime (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      server = await startTestServer({ executor });
      client = new Kindling({ url: server.url });
    });
    after(() => server?.stop());

    it('runs Go code: stdout, stderr and the exit code are the program\'s; a compile error is a failed result', async () => {
      const result = await client.run('go', JSON_PROGRAM);
      assert.equal(result.exitCode, 3, result.stderr);
      assert.deepEqual(JSON.parse(result.stdout), { answer: 42, go: 'go1.24' });
      assert.match(result.stderr, /to stderr/);
      const broken = await client.run('go', 'package main\n\nfunc main() { undefinedThing() }\n');
      assert.notEqual(broken.exitCode, 0);
      assert.match(broken.stderr, /undefined: undefinedThing/);
    });

    it("compiles against the image's standard library cache, not a fresh one per sandbox", async () => {
      const result = await client.runCommand('kindling/go', ['sh', '-c', 'go env GOCACHE GOTOOLCHAIN; ls /var/cache/go-build | wc -l']);
      assert.equal(result.exitCode, 0, result.stderr);
      const [cache, toolchain, entries] = result.stdout.trim().split('\n');
      assert.equal(cache, '/var/cache/go-build');
      assert.equal(toolchain, 'local');
      assert.ok(Number(entries) > 200, `the image's build cache holds ${entries} entries`);
    });

    it('a go command function reads its input on stdin and answers on stdout', async () => {
      const name = `go-upper-${executor}`;
      await client.functions.deploy(name, { runtime: 'go', code: UPPER_PROGRAM });
      const response = await client.functions.invoke(name, 'hello\ngo\n');
      assert.equal(response.text(), 'HELLO\nGO\n');
    });

    it('a bundle that is a Go module with its own package runs with go run . and no network', async () => {
      const dir = directory({
        'go.mod': 'module example.com/app\n\ngo 1.22\n',
        'greet/greet.go': 'package greet\n\nfunc Hello(name string) string { return "hello " + name }\n',
        'main.go': 'package main\n\nimport (\n\t"fmt"\n\t"example.com/app/greet"\n)\n\nfunc main() { fmt.Println(greet.Hello("module")) }\n',
      });
      const name = `go-module-${executor}`;
      await client.functions.deployBundle(name, { runtime: 'go', command: ['go', 'run', '.'] }, tar(dir));
      const response = await client.functions.invoke(name, '');
      assert.equal(response.text(), 'hello module\n');
    });

    it('a persistent sandbox of go builds and runs a program across commands', async () => {
      const sandbox = await client.sandboxes.create({ runtime: 'go' });
      try {
        await sandbox.files.write('/work/main.go', 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("built") }\n');
        const built = await sandbox.commands.run(['go', 'build', '-o', '/work/app', '/work/main.go']);
        assert.equal(built.exitCode, 0, built.stderr);
        const ran = await sandbox.commands.run(['/work/app']);
        assert.equal(ran.stdout, 'built\n');
      } finally {
        await sandbox.kill();
      }
    });
  });
}
