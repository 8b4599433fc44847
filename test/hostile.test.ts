/**
 * Hostile code through the API, per executor (sandbox, docker, microvm); `npm run test:hostile` runs it with the
 * abuse suite (resource bombs) and the network tests. Each case asserts containment from the result, that /healthz
 * kept answering while it ran (p99 of all polls measured and printed; the assert is generous because this machine's
 * two cores are shared), and that the next ordinary execution works.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Kindling, type ExecuteSpec, type ExecutionResult } from '@kindling/sdk';
import { IMAGES_DIR, dockerUnavailableReason, microvmUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';
import { spyAsOtherUser } from './helpers/other-user.js';

/** A secret of the server's process environment: no sandbox may see it. */
const CANARY = `kindling-canary-${process.pid}-${Date.now()}`;
process.env.KINDLING_HOSTILE_CANARY = CANARY;

const EXECUTORS = [
  { name: 'sandbox', unavailable: await sandboxUnavailableReason() },
  { name: 'docker', unavailable: await dockerUnavailableReason() },
  { name: 'microvm', unavailable: await microvmUnavailableReason() },
] as const;

/** Python helpers for raw system calls (x86_64 numbers); each prints `name=ok` or `name=errno`. */
const SYSCALLS = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    print('%s=%s' % (name, 'ok' if r >= 0 else os.strerror(ctypes.get_errno())), flush=True)
`;

interface Ctx {
  serverPort: number;
  loopbackPort: number;
  hostShadowHashes: string[];
  /** A file on the host (in the server's data dir) holding FILE_CANARY. */
  hostFile: string;
  dataDir: string;
}

const FILE_CANARY = `kindling-file-canary-${process.pid}-${Date.now()}`;

interface Attack {
  name: string;
  spec: (ctx: Ctx) => ExecuteSpec;
  check: (result: ExecutionResult, ctx: Ctx, executor: string) => void;
}

const out = (r: ExecutionResult): string => `${r.stdout}\n${r.stderr}`;

const ATTACKS: Attack[] = [
  {
    name: "reading the host's /etc/shadow",
    spec: () => ({ runtime: 'bash', code: 'cat /etc/shadow; echo "rc=$?"; cat /proc/1/root/etc/shadow 2>&1; echo; id -u' }),
    check: (r, ctx) => {
      for (const hash of ctx.hostShadowHashes) assert.ok(!out(r).includes(hash), 'a password hash of the host leaked');
      assert.match(r.stdout, /rc=[1-9]/, 'shadow readable inside');
      assert.doesNotMatch(r.stdout, /^0$/m, 'running as root inside');
    },
  },
  {
    name: '/proc/kcore, /dev/mem and the kernel log',
    spec: () => ({ runtime: 'bash', code: 'for f in /proc/kcore /dev/mem /dev/kmsg /proc/kallsyms; do head -c 64 $f >/dev/null 2>&1 && echo "$f=readable" || echo "$f=denied"; done; head -c 200 /proc/kallsyms | grep -v " 0000000000000000 " | head -1' }),
    check: (r) => {
      for (const f of ['/proc/kcore', '/dev/mem', '/dev/kmsg']) assert.match(r.stdout, new RegExp(`${f}=denied`), r.stdout);
      // kallsyms may be listed, but never with real kernel addresses.
      assert.doesNotMatch(r.stdout, /^(?!0{16})[0-9a-f]{16} [A-Za-z] /m, r.stdout);
    },
  },
  {
    name: 'writes to /sys and /proc/sys',
    spec: () => ({
      runtime: 'bash',
      code: `v=$(cat /sys/kernel/mm/ksm/pages_to_scan 2>/dev/null || echo 100); (echo "$v" > /sys/kernel/mm/ksm/pages_to_scan) 2>/dev/null && echo sys=written || echo sys=denied; (cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname) 2>/dev/null && echo procsys=written || echo procsys=denied`,
    }),
    check: (r) => {
      assert.match(r.stdout, /sys=denied/);
      assert.match(r.stdout, /procsys=denied/);
    },
  },
  {
    name: 'mount, unshare, ptrace, keyctl, bpf, kernel module load',
    spec: () => ({
      runtime: 'python',
      code: `${SYSCALLS}
buf = ctypes.create_string_buffer(b'x' * 64)
sc('mount', 165, b'none', b'/tmp', b'tmpfs', 0, 0)
sc('ptrace_attach', 101, 16, 1, 0, 0)
# If the attach worked (Docker lets a process trace its own container's init), wait until the tracee has stopped
# (__WALL) before detaching: a detach before the stop fails with ESRCH and leaves PID 1 stopped for good.
try:
    os.waitpid(1, 0x40000000)
except OSError:
    pass
libc.syscall(101, ctypes.c_long(17), ctypes.c_long(1), ctypes.c_long(0), ctypes.c_long(0))  # detach again if it worked
sc('keyctl', 250, 0, -3, 0, 0)
sc('add_key', 248, b'user', b'k', buf, 1, -3)
sc('bpf', 321, 0, buf, 64)
sc('init_module', 175, buf, 64, b'')
sc('finit_module', 313, -1, b'', 0)
sc('delete_module', 176, b'kvm', 0)
sc('kexec_load', 246, 0, 0, 0, 0)
sc('setns', 308, -1, 0)
sc('chroot', 161, b'/tmp')
sc('unshare_ns', 272, 0x00020000)
sc('unshare_user', 272, 0x10000000)
`,
    }),
    check: (r, _ctx, executor) => {
      // Unprivileged operations that stay inside the boundary: a microVM runs its own guest kernel (its keyrings and
      // user namespaces are the guest's). The sandbox executor and Docker (Kindling's seccomp profile) deny all.
      const inBoundary: Record<string, string[]> = { microvm: ['unshare_user', 'keyctl', 'add_key'] };
      const guestOnly = inBoundary[executor] ?? [];
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      for (const name of ['mount', 'unshare_user', 'unshare_ns', 'ptrace_attach', 'keyctl', 'add_key', 'bpf', 'init_module', 'finit_module', 'delete_module', 'kexec_load', 'setns', 'chroot']) {
        const m = new RegExp(`^${name}=(.*)$`, 'm').exec(r.stdout);
        assert.ok(m, `${name} missing in ${r.stdout}`);
        if (!guestOnly.includes(name)) assert.notEqual(m[1], 'ok', `${name} succeeded inside the sandbox`);
      }
    },
  },
  {
    name: 'raw and packet sockets',
    spec: () => ({
      runtime: 'python',
      code: `import socket
for name, args in [('raw_icmp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)), ('raw_tcp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)), ('packet', (socket.AF_PACKET, socket.SOCK_RAW, 0)), ('netlink_route', (socket.AF_NETLINK, socket.SOCK_RAW, 0))]:
    try:
        s = socket.socket(*args)
        if name == 'netlink_route':
            s.bind((0, 0)); print(name + '=opened'); continue
        print(name + '=ok')
    except Exception as e:
        print('%s=%s' % (name, e))
`,
    }),
    check: (r) => {
      for (const name of ['raw_icmp', 'raw_tcp', 'packet']) {
        const m = new RegExp(`^${name}=(.*)$`, 'm').exec(r.stdout);
        assert.ok(m, `${name} missing in ${r.stdout}`);
        assert.notEqual(m[1], 'ok', `${name} socket opened inside the sandbox`);
      }
    },
  },
  {
    name: 'socket families beyond unix, inet, inet6 and netlink route',
    spec: () => ({
      runtime: 'python',
      code: `import errno, socket
def t(name, family, kind, proto=0, pair=False):
    try:
        if pair:
            a, b = socket.socketpair(family, kind, proto); a.close(); b.close()
        else:
            socket.socket(family, kind, proto).close()
        print(name + '=ok')
    except OSError as e:
        print('%s=%s' % (name, errno.errorcode.get(e.errno, e.errno)))
t('vsock', 40, socket.SOCK_STREAM)
t('alg', 38, socket.SOCK_SEQPACKET)
t('packet', 17, socket.SOCK_DGRAM)
t('key', 15, socket.SOCK_RAW, 2)
t('netlink_audit', 16, socket.SOCK_RAW, 9)
t('netlink_xfrm', 16, socket.SOCK_RAW, 6)
t('netlink_generic', 16, socket.SOCK_RAW, 16)
t('pair_vsock', 40, socket.SOCK_STREAM, 0, True)
t('unix', 1, socket.SOCK_STREAM)
t('inet', 2, socket.SOCK_STREAM)
t('inet6', 10, socket.SOCK_DGRAM)
t('netlink_route', 16, socket.SOCK_RAW, 0)
t('pair_unix', 1, socket.SOCK_STREAM, 0, True)
# AI_ADDRCONFIG: glibc asks the kernel for the namespace's addresses over netlink route.
socket.getaddrinfo('127.0.0.1', 80, 0, 0, 0, socket.AI_ADDRCONFIG)
print('getaddrinfo=ok')
`,
    }),
    check: (r, _ctx, executor) => {
      assert.equal(r.exitCode, 0, out(r));
      const value = (name: string): string => {
        const m = new RegExp(`^${name}=(.*)$`, 'm').exec(r.stdout);
        assert.ok(m, `${name} missing in ${r.stdout}`);
        return m[1]!;
      };
      for (const name of ['unix', 'inet', 'inet6', 'netlink_route', 'pair_unix', 'getaddrinfo']) assert.equal(value(name), 'ok', name);
      // A microVM runs its own kernel without Kindling's seccomp policy (see docs/security.md): not asserted there.
      if (executor === 'microvm') return;
      for (const name of ['vsock', 'alg', 'packet', 'key', 'netlink_audit', 'netlink_xfrm', 'netlink_generic', 'pair_vsock']) {
        assert.equal(value(name), 'EAFNOSUPPORT', `${name} socket: ${value(name)}`);
      }
    },
  },
  {
    name: 'modify_ldt and personality(ADDR_NO_RANDOMIZE)',
    spec: () => ({
      runtime: 'python',
      code: `${SYSCALLS}
desc = ctypes.create_string_buffer(16)
sc('modify_ldt', 154, 1, desc, 16)
sc('personality_no_aslr', 135, 0x0040000)
sc('personality_read_implies_exec', 135, 0x0400000)
sc('personality_linux', 135, 0)
sc('personality_query', 135, 0xffffffff)
`,
    }),
    check: (r, _ctx, executor) => {
      assert.equal(r.exitCode, 0, out(r));
      const value = (name: string): string => new RegExp(`^${name}=(.*)$`, 'm').exec(r.stdout)?.[1] ?? `${name} missing`;
      assert.equal(value('personality_linux'), 'ok');
      assert.equal(value('personality_query'), 'ok');
      if (executor === 'microvm') return;
      for (const name of ['modify_ldt', 'personality_no_aslr', 'personality_read_implies_exec']) assert.equal(value(name), 'Operation not permitted', name);
    },
  },
  {
    name: "a crash: no core file, no core_pattern helper, and RLIMIT_CORE cannot be changed",
    spec: () => ({
      runtime: 'python',
      code: `import ctypes, os, resource, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
class Rlimit(ctypes.Structure):
    _fields_ = [('cur', ctypes.c_ulong), ('max', ctypes.c_ulong)]
print('core=%d:%d' % resource.getrlimit(resource.RLIMIT_CORE))
for name, cur, mx in [('lower', 0, 0), ('raise', 2**64 - 1, 2**64 - 1), ('soft0', 0, 1)]:
    rc = libc.setrlimit(4, ctypes.byref(Rlimit(cur, mx)))
    print('%s=%s' % (name, 'ok' if rc == 0 else os.strerror(ctypes.get_errno())))
rc = libc.prlimit(0, 4, ctypes.byref(Rlimit(0, 0)), None)
print('prlimit=%s' % ('ok' if rc == 0 else os.strerror(ctypes.get_errno())))
print('core_after=%d:%d' % resource.getrlimit(resource.RLIMIT_CORE))
os.chdir('/tmp')
crash = subprocess.run([sys.executable, '-c', 'import ctypes; ctypes.string_at(0)'])
print('crash=%d' % crash.returncode)
print('cores=%s' % ','.join(f for f in os.listdir('/tmp') if f.startswith('core')))
`,
    }),
    check: (r, _ctx, executor) => {
      assert.equal(r.exitCode, 0, out(r));
      assert.match(r.stdout, /^crash=-11$/m, out(r));
      assert.match(r.stdout, /^cores=$/m, 'a core file was written');
      // A microVM's kernel and core_pattern are the guest's own: a crash there cannot reach the host's helper.
      if (executor === 'microvm') return;
      // 1 byte: no core file fits, and the kernel refuses to start a core_pattern pipe helper at exactly this value.
      assert.match(r.stdout, /^core=1:1$/m, out(r));
      for (const name of ['lower', 'raise', 'soft0', 'prlimit']) assert.match(r.stdout, new RegExp(`^${name}=Operation not permitted$`, 'm'), out(r));
      assert.match(r.stdout, /^core_after=1:1$/m);
    },
  },
  {
    name: 'host paths in /proc/1/cmdline and /proc/self/mountinfo',
    spec: () => ({ runtime: 'bash', code: 'tr "\\0" " " </proc/1/cmdline; echo; cat /proc/self/mountinfo; cat /proc/1/mountinfo 2>/dev/null; echo end' }),
    check: (r, ctx, executor) => {
      assert.equal(r.exitCode, 0, out(r));
      assert.match(r.stdout, /^end$/m);
      // The sandbox executor's promise (docs/security.md, 8.); Docker's overlay and bind mounts name the engine's and
      // the data dir's paths, and a microVM's mounts are the guest's.
      if (executor !== 'sandbox') return;
      for (const hostPath of [IMAGES_DIR, ctx.dataDir]) assert.ok(!r.stdout.includes(hostPath), `${hostPath} visible inside:\n${r.stdout}`);
    },
  },
  {
    name: "connecting to the server's port and to another loopback service",
    spec: (ctx) => ({
      runtime: 'python',
      code: `import socket
for h, p in [('127.0.0.1', ${ctx.serverPort}), ('127.0.0.1', ${ctx.loopbackPort}), ('::1', ${ctx.serverPort}), ('localhost', ${ctx.loopbackPort})]:
    try:
        s = socket.create_connection((h, p), timeout=3); s.sendall(b'GET /healthz HTTP/1.0\\r\\n\\r\\n'); print('%s:%d=OPEN %r' % (h, p, s.recv(100)))
    except Exception as e:
        print('%s:%d=BLOCKED %s' % (h, p, e))
`,
    }),
    check: (r, ctx) => {
      assert.equal(r.exitCode, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /=OPEN/, r.stdout);
      assert.match(r.stdout, new RegExp(`127\\.0\\.0\\.1:${ctx.serverPort}=BLOCKED`));
      assert.match(r.stdout, new RegExp(`127\\.0\\.0\\.1:${ctx.loopbackPort}=BLOCKED`));
    },
  },
  {
    name: 'symlink and .. escapes from the work dir and the code dir',
    spec: (ctx) => ({
      runtime: 'bash',
      code: `cd /work; f='${ctx.hostFile}'; cat "$f"; ln -s "$f" h1 && cat h1; ln -s "../../../../../..$f" h2 && cat h2; cat "/proc/1/root$f" "/.kindling/../../../..$f" "/proc/self/cwd/../../..$f"
ln -s ../../../../../../etc/shadow s1; cat s1 >/dev/null 2>&1 && echo shadow=read || echo shadow=denied
ls /.kindling; (echo x > /.kindling/evil) 2>/dev/null && echo codedir=written || echo codedir=denied
(echo x > /etc/evil) 2>/dev/null && echo root=written || echo root=denied
cat /work/../../../proc/self/root/../../../etc/hostname; readlink -f /work/../../..`,
    }),
    check: (r) => {
      assert.match(r.stdout, /shadow=denied/);
      assert.match(r.stdout, /codedir=denied/);
      assert.match(r.stdout, /root=denied/);
      assert.ok(!out(r).includes(FILE_CANARY), 'a host file was read through a symlink or .. path');
    },
  },
  {
    name: 'environment variables of the server',
    spec: () => ({ runtime: 'bash', code: 'env; cat /proc/1/environ 2>/dev/null | tr "\\0" "\\n"; cat /proc/self/environ | tr "\\0" "\\n"; ps -eo args 2>/dev/null || ls /proc' }),
    check: (r) => {
      assert.ok(!out(r).includes(CANARY), 'the server canary leaked into the sandbox');
      assert.doesNotMatch(out(r), /KINDLING_HOSTILE_CANARY|NODE_EXTRA_CA_CERTS/);
    },
  },
];

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
}

/** Polls /healthz every 25 ms while `work` runs; returns the work's result and every answer's latency. */
async function whilePolling(url: string, work: () => Promise<ExecutionResult>): Promise<{ result: ExecutionResult; latencies: number[] }> {
  let done = false;
  const latencies: number[] = [];
  const poller = (async () => {
    while (!done) {
      const startedAt = performance.now();
      const response = await fetch(`${url}/healthz`);
      assert.equal(response.status, 200);
      await response.arrayBuffer();
      latencies.push(performance.now() - startedAt);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  })();
  try {
    return { result: await work(), latencies };
  } finally {
    done = true;
    await poller;
  }
}

function hostShadowHashes(): string[] {
  try {
    return readFileSync('/etc/shadow', 'utf8')
      .split('\n')
      .map((l) => l.split(':')[1] ?? '')
      .filter((h) => h.length > 12 && h.startsWith('$'));
  } catch {
    return [];
  }
}

for (const { name: executorName, unavailable } of EXECUTORS) {
  describe(`hostile code through the API: ${executorName}`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    let loopback: Server;
    let ctx: Ctx;
    const all: number[] = [];
    before(async () => {
      server = await startTestServer({ executor: executorName });
      client = new Kindling({ url: server.url, timeoutMs: 180_000 });
      loopback = createServer((s) => s.end('loopback service reached'));
      await new Promise<void>((resolve) => loopback.listen(0, '127.0.0.1', resolve));
      const hostFile = join(server.dataDir, 'host-secret.txt');
      await writeFile(hostFile, FILE_CANARY, { mode: 0o644 });
      ctx = { hostFile, dataDir: server.dataDir, serverPort: Number(new URL(server.url).port), loopbackPort: (loopback.address() as { port: number }).port, hostShadowHashes: hostShadowHashes() };
    });
    after(async () => {
      await new Promise((resolve) => loopback?.close(resolve));
      if (all.length > 0) {
        console.log(`[hostile] ${executorName}: /healthz during attacks: ${all.length} polls, p50 ${percentile(all, 50).toFixed(1)} ms, p99 ${percentile(all, 99).toFixed(1)} ms, max ${Math.max(...all).toFixed(1)} ms`);
      }
      if (!server) return;
      const executor = server.executors.get(executorName);
      await server.stop();
      assert.equal(executor ? (await executor.reap()).removed : 0, 0, 'resources left behind');
    });

    for (const attack of ATTACKS) {
      it(`${attack.name}: contained, server healthy, next run fine`, async () => {
        const { result, latencies } = await whilePolling(server.url, () => client.execute({ timeoutMs: 60_000, ...attack.spec(ctx) }));
        attack.check(result, ctx, executorName);
        all.push(...latencies);
        // The target is 100 ms p99; on this shared two-core machine the assert is generous and the measured
        // p99 is printed at the end of the suite.
        if (latencies.length >= 5) assert.ok(percentile(latencies, 99) < 1000, `healthz p99 ${percentile(latencies, 99).toFixed(0)} ms during the attack`);
        const next = await client.run('python', 'print("fine")');
        assert.equal(next.stdout, 'fine\n');
      });
    }

    it('another user of the host cannot read an execution\'s env, code or output, nor a warm sandbox\'s', async (t) => {
      if (executorName === 'microvm') {
        t.skip('the microvm executor passes env, code and output over the VM\'s serial port; not covered here');
        return;
      }
      const tag = `${process.pid}-${Date.now()}`;
      const secrets = { env: `env-secret-${tag}`, code: `code-secret-${tag}`, output: `output-secret-${tag}`, handlerEnv: `handler-env-secret-${tag}`, handlerCode: `handler-code-secret-${tag}` };
      // A warm handler sandbox (env and code through the agent socket) stays up between invocations.
      await client.functions.deploy('spy-target', {
        runtime: 'python',
        code: `# ${secrets.handlerCode}\nimport os\ndef handler(b):\n    return os.environ['H'][:4]\n`,
        handler: 'handler',
        env: { H: secrets.handlerEnv },
      });
      assert.equal((await client.functions.invoke('spy-target', 'x')).text(), 'hand');
      // A long execution with a secret env value that prints a secret, then waits to be killed.
      const abort = new AbortController();
      let printed!: () => void;
      const running = new Promise<void>((resolve) => (printed = resolve));
      const execution = client
        .execute(
          { runtime: 'bash', code: `# ${secrets.code}\necho "$MYSECRET" | tr a-z A-Z >/dev/null; echo ${secrets.output}; exec sleep 120`, env: { MYSECRET: secrets.env }, timeoutMs: 120_000 },
          { signal: abort.signal, onStdout: () => printed() },
        )
        .catch(() => undefined);
      try {
        await running;
        // The other attacks' host file (made world-readable by this test on purpose) and the pid file are not secrets.
        const report = await spyAsOtherUser({ dataDir: server.dataDir, secrets: Object.values(secrets), ignore: [ctx.hostFile, join(server.dataDir, 'server.pid')] });
        assert.deepEqual(report.procHits, [], `secrets in /proc of host processes: ${JSON.stringify(report.procHits)}`);
        assert.deepEqual(report.opened, [], `opened by another user: ${JSON.stringify(report.opened)}`);
        assert.ok(report.tried > 0, 'the spy found nothing to try');
      } finally {
        abort.abort();
        await execution;
      }
    });

    it('workdir traversal is refused before anything runs', async () => {
      for (const workdir of ['/work/../etc', '/../etc', '/tmp/../../etc', '/proc', '/etc', 'work', '/tmp/a/../../etc']) {
        await assert.rejects(client.execute({ runtime: 'bash', code: 'true', workdir }), (e: unknown) => (e as { status?: number }).status === 400, workdir);
      }
    });
  });
}
