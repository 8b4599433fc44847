/**
 * The `java` runtime end to end on a real server: a Main.java runs in source-file mode on Debian trixie's OpenJDK 21
 * in kindling/java (stdout, stderr, the exit code of System.exit, a compile error as a failed result); a command
 * function reads stdin; a persistent sandbox compiles and runs with javac and java. On the sandbox executor, and on
 * docker where the engine is reachable.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const PROGRAM = `import java.util.List;

public class Main {
    record Pair(String name, int value) {}

    public static void main(String[] args) {
        var pairs = List.of(new Pair("a", 40), new Pair("b", 2));
        System.out.println(pairs.stream().mapToInt(Pair::value).sum() + " on " + Runtime.version().feature());
        System.err.println("to stderr");
        System.exit(3);
    }
}
`;

const UPPER = `import java.io.*;

public class Main {
    public static void main(String[] args) throws IOException {
        var in = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = in.readLine()) != null; ) System.out.println(line.toUpperCase());
    }
}
`;

for (const executor of ['sandbox', 'docker'] as const) {
  const unavailable = executor === 'sandbox' ? await sandboxUnavailableReason() : await dockerUnavailableReason();
  describe(`the java runtime (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      server = await startTestServer({ executor });
      client = new Kindling({ url: server.url });
    });
    after(() => server?.stop());

    it("runs Java 21 source: stdout, stderr and System.exit's code are the program's; a compile error is a failed result", async () => {
      const result = await client.run('java', PROGRAM);
      assert.equal(result.exitCode, 3, result.stderr);
      assert.equal(result.stdout, '42 on 21\n');
      assert.match(result.stderr, /to stderr/);
      const broken = await client.run('java', 'public class Main { public static void main(String[] a) { undefinedThing(); } }\n');
      assert.notEqual(broken.exitCode, 0);
      assert.match(broken.stderr, /cannot find symbol/);
    });

    it('a java command function reads its input on stdin and answers on stdout', async () => {
      await client.functions.deploy(`java-upper-${executor}`, { runtime: 'java', code: UPPER });
      assert.equal((await client.functions.invoke(`java-upper-${executor}`, 'hello\njava\n')).text(), 'HELLO\nJAVA\n');
    });

    it('a persistent sandbox of java compiles with javac and runs the classes across commands', async () => {
      const sandbox = await client.sandboxes.create({ runtime: 'java' });
      try {
        await sandbox.files.write('/work/Hello.java', 'public class Hello { public static void main(String[] a) { System.out.println("compiled"); } }\n');
        const compiled = await sandbox.commands.run(['javac', '-d', '/work/classes', '/work/Hello.java']);
        assert.equal(compiled.exitCode, 0, compiled.stderr);
        const ran = await sandbox.commands.run(['java', '-cp', '/work/classes', 'Hello']);
        assert.equal(ran.stdout, 'compiled\n');
      } finally {
        await sandbox.kill();
      }
    });
  });
}
