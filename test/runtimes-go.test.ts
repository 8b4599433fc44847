/**
 * The `go` runtime end to end on a real server: Go code runs with `go run` in kindling/go (Debian trixie's Go) against
 * the standard library compiled into the image's build cache; compile errors and exit codes are the user's result; a
 * command function reads its input on stdin; a bundle that is a Go module with a package of its own runs `go run .`
 * with no network; a persistent sandbox has the toolchain. Go code functions and Go bundles without a command are
 * compiled at deploy (a compile error fails the deploy, the previous version serving on), and a call execs the program.
 * A go handler is compiled with the resident agent: package state lives across warm calls, output goes to the
 * invocation's log, an error or a panic is a failed invocation. On the sandbox executor, and on docker where the
 * engine is reachable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling, KindlingError, type LogEvent } from '@kindling/sdk';
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

    it('a go code function is compiled at deploy: the version records the program, the same code reuses it, and a call execs it without compiling', async () => {
      // os.Args[0] is the program's path: the binary compiled at deploy, not one `go build` made for this call.
      const code = `package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() { fmt.Println(os.Args[0]) }\n// ${executor} ${Date.now()}\n`;
      const first = await client.functions.deploy(`go-compiled-${executor}`, { runtime: 'go', code });
      assert.equal(first.layer?.kind, 'compile');
      assert.equal(first.layer?.reused, false);
      assert.ok((first.layer?.bytes ?? 0) > 500_000, `a Go program of ${first.layer?.bytes} bytes`);
      const again = await client.functions.deploy(`go-compiled-${executor}-2`, { runtime: 'go', code });
      assert.equal(again.layer?.sha256, first.layer?.sha256);
      assert.equal(again.layer?.reused, true);
      for (const name of [`go-compiled-${executor}`, `go-compiled-${executor}-2`]) {
        const response = await client.functions.invoke(name, '');
        assert.equal(response.text(), '/kindling-bin/main\n');
      }
      const builds = await client.functions.builds(`go-compiled-${executor}`);
      assert.equal(builds[0]?.kind, 'compile');
      assert.equal(builds[0]?.status, 'ready');
    });

    it("a compile error fails the deploy with BUILD_FAILED and the compiler's words; the previous version keeps serving", async () => {
      const name = `go-broken-${executor}`;
      await client.functions.deploy(name, { runtime: 'go', code: UPPER_PROGRAM });
      const failed = await client.functions.deploy(name, { runtime: 'go', code: 'package main\n\nfunc main() { undefinedThing() }\n' }).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(failed.code, 'BUILD_FAILED');
      assert.match(failed.message, /undefined: undefinedThing/);
      assert.match(failed.message, /fix the compile errors/);
      assert.equal((await client.functions.get(name)).version, 1);
      assert.equal((await client.functions.invoke(name, 'still\n')).text(), 'STILL\n');
    });

    it('a go bundle without a command is compiled at deploy (its module, vendored modules too) and runs in the bundle\'s directory', async () => {
      const dir = directory({
        'go.mod': 'module example.com/app\n\ngo 1.22\n\nrequire example.org/shout v1.0.0\n',
        'vendor/modules.txt': '# example.org/shout v1.0.0\n## explicit; go 1.22\nexample.org/shout\n',
        'vendor/example.org/shout/shout.go': 'package shout\n\nimport "strings"\n\nfunc Shout(s string) string { return strings.ToUpper(s) + "!" }\n',
        'greet/greet.go': 'package greet\n\nfunc Hello(name string) string { return "hello " + name }\n',
        'main.go':
          'package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"example.com/app/greet"\n\t"example.org/shout"\n)\n\n' +
          'func main() {\n\tdata, err := os.ReadFile("data.txt")\n\tif err != nil { panic(err) }\n\tfmt.Println(shout.Shout(greet.Hello(string(data))), os.Args[0])\n}\n',
        'data.txt': 'bundle',
      });
      const name = `go-bundle-compiled-${executor}`;
      const info = await client.functions.deployBundle(name, { runtime: 'go' }, tar(dir));
      assert.equal(info.layer?.kind, 'compile');
      assert.equal((await client.functions.invoke(name, '')).text(), 'HELLO BUNDLE! /kindling-bin/main\n');
    });

    it('a go bundle that needs a module it does not carry fails its deploy with how to vendor it (builds fetch no modules by default)', async () => {
      const dir = directory({
        'go.mod': 'module example.com/needy\n\ngo 1.22\n\nrequire example.org/missing v1.0.0\n',
        'main.go': 'package main\n\nimport "example.org/missing"\n\nfunc main() { missing.Run() }\n',
      });
      const failed = await client.functions.deployBundle(`go-needy-${executor}`, { runtime: 'go' }, tar(dir)).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(failed.code, 'BUILD_FAILED');
      assert.match(failed.message, /go mod vendor/);
    });

    it('a go handler is compiled with its agent: state lives across warm calls, output goes to the log, an error or a panic fails the call', async () => {
      const name = `go-handler-${executor}`;
      const code = [
        'package main',
        '',
        'import (',
        '\t"errors"',
        '\t"fmt"',
        '\t"strings"',
        ')',
        '',
        'var calls int',
        '',
        'func Handle(body []byte) (string, error) {',
        '\tcalls++',
        '\tfmt.Println("call", calls)',
        '\tswitch string(body) {',
        '\tcase "fail":',
        '\t\treturn "", errors.New("refused: fail")',
        '\tcase "panic":',
        '\t\tvar m map[string]int',
        '\t\tm["x"] = 1',
        '\t}',
        '\treturn fmt.Sprintf("%d:%s", calls, strings.ToUpper(string(body))), nil',
        '}',
        '',
      ].join('\n');
      const info = await client.functions.deploy(name, { runtime: 'go', code, handler: 'Handle' });
      assert.equal(info.style, 'handler');
      assert.equal(info.layer?.kind, 'compile');
      const first = await client.functions.invoke(name, 'a');
      assert.deepEqual([first.text(), first.exitCode, first.coldStart], ['1:A', 0, true]);
      const second = await client.functions.invoke(name, 'b');
      assert.deepEqual([second.text(), second.coldStart], ['2:B', false]);
      const failed = await client.functions.invoke(name, 'fail');
      assert.equal(failed.exitCode, 1);
      assert.match(failed.text(), /refused: fail/);
      const panicked = await client.functions.invoke(name, 'panic');
      assert.equal(panicked.exitCode, 1);
      assert.match(panicked.text(), /panic: assignment to entry in nil map/);
      // The sandbox lives on after both; what the handler printed is in its invocation's log.
      const accepted = await client.functions.invokeAsync(name, 'c');
      assert.equal((await client.invocations.waitFor(accepted.invocationId, { timeoutMs: 60_000 })).status, 'succeeded');
      assert.equal((await client.invocations.output(accepted.invocationId)).text(), '5:C');
      const logs: LogEvent[] = [];
      for await (const event of client.invocations.logs(accepted.invocationId)) logs.push(event);
      assert.equal(logs.filter((event) => event.type === 'stderr').map((event) => event.text).join(''), 'call 5\n');
    });

    it("a go handler bundle (FILE:FUNCTION) is its package main compiled with the agent: several files, its data read from /work at init", async () => {
      const bundle = directory({
        'go.mod': 'module example.com/greeter\n\ngo 1.22\n',
        'main.go': 'package main\n\nimport "strings"\n\nfunc Handle(body []byte) (string, error) {\n\treturn greeting + " " + strings.ToUpper(string(body)), nil\n}\n',
        'greeting.go': 'package main\n\nimport (\n\t"os"\n\t"strings"\n)\n\nvar greeting = load()\n\nfunc load() string {\n\tdata, err := os.ReadFile("greeting.txt")\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\treturn strings.TrimSpace(string(data))\n}\n',
        'greeting.txt': 'hello from the bundle\n',
      });
      const name = `go-handler-bundle-${executor}`;
      const info = await client.functions.deployBundle(name, { runtime: 'go', handler: 'main.go:Handle' }, tar(bundle));
      assert.equal(info.style, 'handler');
      assert.equal(info.layer?.kind, 'compile');
      assert.equal((await client.functions.invoke(name, 'go')).text(), 'hello from the bundle GO');
      assert.equal((await client.functions.invoke(name, 'again')).coldStart, false);
      // A FUNCTION that is not a Go identifier is refused before any build.
      const bad = await client.functions.deployBundle(`${name}-bad`, { runtime: 'go', handler: 'main.go:not-go' }, tar(bundle)).then(
        () => assert.fail('expected a refusal'),
        (error: KindlingError) => error,
      );
      assert.equal(bad.status, 400);
    });

    it('a go handler that is not a handler shape, or a go handler on an executor that cannot bind its program, is refused at deploy', async () => {
      const wrongShape = await client.functions.deploy(`go-shape-${executor}`, { runtime: 'go', code: 'package main\n\nfunc Handle(n int) int { return n }\n', handler: 'Handle' });
      const call = await client.functions.invoke(wrongShape.name, 'x');
      assert.equal(call.exitCode, 1);
      assert.match(call.text(), /func\(body \[\]byte\) \(\[\]byte, error\)/);
      const withMain = await client.functions.deploy(`go-main-${executor}`, { runtime: 'go', code: 'package main\n\nfunc main() {}\nfunc Handle(b []byte) []byte { return b }\n', handler: 'Handle' }).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(withMain.code, 'BUILD_FAILED');
      assert.match(withMain.message, /main redeclared/);
      const elsewhere = await client.functions.deploy(`go-gvisor-${executor}`, { runtime: 'go', code: 'package main\n', handler: 'Handle', executor: 'gvisor' }).then(
        () => assert.fail('expected a refusal'),
        (error: KindlingError) => error,
      );
      assert.equal(elsewhere.status, 400);
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
