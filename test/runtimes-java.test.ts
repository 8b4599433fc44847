/**
 * The `java` runtime end to end on a real server: a Main.java runs in source-file mode on Debian trixie's OpenJDK 21
 * in kindling/java (stdout, stderr, the exit code of System.exit, a compile error as a failed result); a command
 * function reads stdin; a persistent sandbox compiles and runs with javac and java. A java handler (`Class.method`) is
 * compiled with the resident agent at deploy: static state lives across warm calls, System.out goes to the invocation's
 * log, an exception fails the call with its stack trace, a compile error fails the deploy. On the sandbox executor, and
 * on docker where the engine is reachable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Kindling, type KindlingError, type LogEvent } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
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

const HANDLER = `import java.nio.charset.StandardCharsets;

public class Greeter {
    static int calls = 0;
    static final int GREETING = Runtime.version().feature();

    public static String greet(String body) {
        calls++;
        System.out.println("call " + calls);
        if (body.equals("fail")) throw new IllegalStateException("refused: " + body);
        return calls + ":" + body.toUpperCase() + " on " + GREETING;
    }

    public byte[] echo(byte[] body) {
        return new String(body, StandardCharsets.UTF_8).repeat(2).getBytes(StandardCharsets.UTF_8);
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

const directory = directoryMaker('kindling-java-');
const tar = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);

/** A dependency as users vendor it (builds reach no Maven repository): the source of a jar the test makes. */
const SHOUT = `package shout;

public final class Shout {
    public static String shout(String text) {
        return text.toUpperCase() + "!";
    }
}
`;

/** A handler bundle: two packages of its own, the vendored jar, a resource at its root. */
const BUNDLE_API = `package com.acme;

import com.acme.text.Words;
import java.nio.charset.StandardCharsets;
import shout.Shout;

public class Api {
    static int calls = 0;

    public static String handle(String body) throws Exception {
        calls++;
        try (var in = Api.class.getResourceAsStream("/greeting.txt")) {
            String greeting = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
            return calls + " " + Shout.shout(Words.join(greeting, body));
        }
    }
}
`;
const BUNDLE_WORDS = `package com.acme.text;

public final class Words {
    public static String join(String a, String b) {
        return a + ", " + b;
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

    it('a java handler is compiled with its agent at deploy: state lives across warm calls, output goes to the log, an exception fails the call', async () => {
      const name = `java-handler-${executor}`;
      const info = await client.functions.deploy(name, { runtime: 'java', code: HANDLER, handler: 'Greeter.greet' });
      assert.equal(info.style, 'handler');
      assert.equal(info.layer?.kind, 'compile');
      const first = await client.functions.invoke(name, 'a');
      assert.deepEqual([first.text(), first.exitCode, first.coldStart], ['1:A on 21', 0, true]);
      const second = await client.functions.invoke(name, 'b');
      assert.deepEqual([second.text(), second.coldStart], ['2:B on 21', false]);
      const failed = await client.functions.invoke(name, 'fail');
      assert.equal(failed.exitCode, 1);
      assert.match(failed.text(), /IllegalStateException: refused: fail\n\s+at Greeter\.greet/);
      // The sandbox lives on; what the handler printed is in its invocation's log.
      const accepted = await client.functions.invokeAsync(name, 'c');
      assert.equal((await client.invocations.waitFor(accepted.invocationId, { timeoutMs: 60_000 })).status, 'succeeded');
      assert.equal((await client.invocations.output(accepted.invocationId)).text(), '4:C on 21');
      const logs: LogEvent[] = [];
      for await (const event of client.invocations.logs(accepted.invocationId)) logs.push(event);
      assert.equal(logs.filter((event) => event.type === 'stderr').map((event) => event.text).join(''), 'call 4\n');
      // An instance method taking and returning bytes; the same code is compiled once.
      const echo = await client.functions.deploy(`${name}-echo`, { runtime: 'java', code: HANDLER, handler: 'Greeter.echo' });
      assert.equal(echo.layer?.kind, 'compile');
      assert.equal((await client.functions.invoke(`${name}-echo`, 'ab')).text(), 'abab');
    });

    it('a java handler that does not compile, or names no such method, or is no Class.method, is refused', async () => {
      const broken = await client.functions.deploy(`java-broken-${executor}`, { runtime: 'java', code: 'public class H { public static String h(String b) { return undefinedThing(); } }\n', handler: 'H.h' }).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(broken.code, 'BUILD_FAILED');
      assert.match(broken.message, /cannot find symbol/);
      await client.functions.deploy(`java-nomethod-${executor}`, { runtime: 'java', code: 'public class H { public static int h(int n) { return n; } }\n', handler: 'H.h' });
      const call = await client.functions.invoke(`java-nomethod-${executor}`, 'x');
      assert.equal(call.exitCode, 1);
      assert.match(call.text(), /no public method h\(byte\[\] body\) or h\(String body\)/);
      const shape = await client.functions.deploy(`java-shape-${executor}`, { runtime: 'java', code: 'public class H {}\n', handler: 'handle' }).then(
        () => assert.fail('expected a refusal'),
        (error: KindlingError) => error,
      );
      assert.equal(shape.status, 400);
      assert.match(shape.message, /Class\.method/);
    });

    it('a java handler bundle (FILE:[package.]Class.method) compiles every .java file with the jars it carries; its resources are on the class path', async () => {
      const made = await client.execute({ image: 'kindling/java', command: ['sh', '-c', 'mkdir -p /tmp/s /tmp/c && cat > /tmp/s/Shout.java && javac -d /tmp/c /tmp/s/Shout.java 1>&2 && jar cf /tmp/shout.jar -C /tmp/c . && base64 -w0 /tmp/shout.jar'], stdin: SHOUT });
      assert.equal(made.exitCode, 0, made.stderr);
      const bundle = directory({
        'src/com/acme/Api.java': BUNDLE_API,
        'src/com/acme/text/Words.java': BUNDLE_WORDS,
        'lib/shout.jar': Buffer.from(made.stdout, 'base64'),
        'greeting.txt': 'hello\n',
      });
      const name = `java-bundle-${executor}`;
      const info = await client.functions.deployBundle(name, { runtime: 'java', handler: 'src/com/acme/Api.java:com.acme.Api.handle' }, tar(bundle));
      assert.equal(info.style, 'handler');
      assert.equal(info.layer?.kind, 'compile');
      const first = await client.functions.invoke(name, 'java');
      assert.deepEqual([first.text(), first.exitCode, first.coldStart], ['1 HELLO, JAVA!', 0, true]);
      const second = await client.functions.invoke(name, 'again');
      assert.deepEqual([second.text(), second.coldStart], ['2 HELLO, AGAIN!', false]);
      // FUNCTION must be [package.]Class.method; a bundle whose sources do not compile fails its deploy with javac's words.
      const shape = await client.functions.deployBundle(`${name}-shape`, { runtime: 'java', handler: 'src/com/acme/Api.java:handle' }, tar(bundle)).then(
        () => assert.fail('expected a refusal'),
        (error: KindlingError) => error,
      );
      assert.equal(shape.status, 400);
      assert.match(shape.message, /Class\.method/);
      const withoutJar = directory({ 'src/com/acme/Api.java': BUNDLE_API, 'src/com/acme/text/Words.java': BUNDLE_WORDS, 'greeting.txt': 'hello\n' });
      const broken = await client.functions.deployBundle(`${name}-nojar`, { runtime: 'java', handler: 'src/com/acme/Api.java:com.acme.Api.handle' }, tar(withoutJar)).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(broken.code, 'BUILD_FAILED');
      assert.match(broken.message, /symbol: +variable Shout/);
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
