/**
 * network "egress" against real test hosts, per executor. Two hosts live in network namespaces this test makes:
 * a "public" one at 198.51.100.2 (TEST-NET-2, opened with --egress-allow as an operator would open a range) and a
 * private one at 10.99.0.2 (denied). Besides: a TCP service on the host (all addresses) and the server's own port.
 * No packet goes to an address outside this machine's namespaces: the helper checks the routes first.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { docker, dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';
import { createTestHost, netUnavailableReason, type TestHost } from './helpers/nethost.js';
import { ownerChainPrefix } from '../src/network/firewall.js';
import { NetnsPool } from '../src/network/netns.js';

const execFileAsync = promisify(execFile);
const netUnavailable = await netUnavailableReason();
const EXECUTORS = [
  { name: 'sandbox', unavailable: netUnavailable ?? (await sandboxUnavailableReason()) },
  { name: 'docker', unavailable: netUnavailable ?? (await dockerUnavailableReason()) },
] as const;

/** Python run in the sandbox: tries each target, prints `host:port OPEN <body>` or `host:port BLOCKED <error>`. */
function probeCode(targets: [string, number][]): string {
  return `
import socket, struct
def gateway():
    for line in open('/proc/net/route').read().splitlines()[1:]:
        f = line.split()
        if f[1] == '00000000':
            return socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))
    return None
targets = ${JSON.stringify(targets)}
g = gateway()
if g: targets.append([g, targets[-1][1]])
print('gateway', g)
for h, p in targets:
    s = socket.socket(); s.settimeout(4)
    try:
        s.connect((h, p)); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); d = s.recv(300)
        print('%s:%d OPEN %s' % (h, p, d.decode(errors='replace').split('\\r\\n\\r\\n')[-1]))
    except Exception as e:
        print('%s:%d BLOCKED %s %s' % (h, p, type(e).__name__, e))
    finally:
        s.close()
`;
}

function line(stdout: string, target: string): string {
  const found = stdout.split('\n').find((l) => l.startsWith(`${target} `));
  assert.ok(found, `no line for ${target} in:\n${stdout}`);
  return found;
}

/** The owner's egress chains (names from the firewall module itself); a failing iptables read fails the test. */
async function iptablesChains(ownerId: string): Promise<string[]> {
  const out: string[] = [];
  for (const tool of ['iptables', 'ip6tables']) {
    for (const table of ['filter', 'nat']) {
      const { stdout } = await execFileAsync(tool, ['-w', '10', '-t', table, '-S']);
      out.push(...stdout.split('\n').filter((l) => l.includes(ownerChainPrefix(ownerId))));
    }
  }
  return out;
}

/** The owner's network namespaces (the sandbox executor's egress), by the pool's own naming. */
function netnsOf(ownerId: string): string[] {
  const prefix = new NetnsPool({ ownerId }).nsPrefix;
  try {
    return readdirSync('/run/netns').filter((n) => n.startsWith(prefix));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

describe('network egress: test hosts', { skip: EXECUTORS.every((e) => e.unavailable !== null) ? 'no executor can run network tests here' : false }, () => {
  let publicHost: TestHost | undefined;
  let privateHost: TestHost | undefined;
  let hostService: Server | undefined;
  let hostServicePort = 0;
  before(async () => {
    publicHost = await createTestHost('198.51.100');
    privateHost = await createTestHost('10.99.0');
    hostService = createServer((socket) => socket.end('HTTP/1.0 200 OK\r\n\r\nhost service reached'));
    await new Promise<void>((resolve) => hostService!.listen(0, '0.0.0.0', resolve));
    hostServicePort = (hostService.address() as { port: number }).port;
  });
  after(async () => {
    await new Promise((resolve) => hostService?.close(resolve));
    await publicHost?.remove();
    await privateHost?.remove();
  });

  for (const { name: executor, unavailable } of EXECUTORS) {
    describe(executor, { skip: unavailable ?? false }, () => {
      let server: TestServer;
      let client: Kindling;
      before(async () => {
        server = await startTestServer({ executor, egressAllow: ['198.51.100.0/24'] });
        client = new Kindling({ url: server.url });
      });
      after(async () => {
        if (!server) return;
        const ownerId = server.ownerId;
        const ex = server.executors.get(executor);
        await server.stop();
        assert.equal(ex ? (await ex.reap()).removed : 0, 0, 'resources left behind');
        assert.deepEqual(await iptablesChains(ownerId), [], 'iptables chains left behind');
        assert.deepEqual(netnsOf(ownerId), [], 'network namespaces left behind');
        const networks = await docker.listNetworks({ filters: JSON.stringify({ label: [`dev.kindling.owner=${ownerId}`] }) });
        assert.deepEqual(networks, [], 'docker networks left behind');
      });

      it('egress reaches the public test host; private hosts, the host itself and the server port are blocked', async () => {
        const serverPort = Number(new URL(server.url).port);
        const targets: [string, number][] = [
          [publicHost!.address, publicHost!.port],
          [privateHost!.address, privateHost!.port],
          ['127.0.0.1', serverPort],
          [publicHost!.hostAddress, hostServicePort],
        ];
        const result = await client.execute({ runtime: 'python', code: probeCode(targets), network: 'egress', timeoutMs: 60_000 });
        assert.equal(result.exitCode, 0, result.stderr);
        const out = result.stdout;
        assert.match(line(out, `${publicHost!.address}:${publicHost!.port}`), new RegExp(`OPEN ${publicHost!.banner}`));
        assert.match(line(out, `${privateHost!.address}:${privateHost!.port}`), /BLOCKED/);
        assert.match(line(out, `127.0.0.1:${serverPort}`), /BLOCKED/);
        assert.match(line(out, `${publicHost!.hostAddress}:${hostServicePort}`), /BLOCKED/);
        const gateway = /^gateway (\S+)/m.exec(out)?.[1];
        assert.ok(gateway && gateway !== 'None', out);
        assert.match(line(out, `${gateway}:${hostServicePort}`), /BLOCKED/);
        // The rules and namespaces exist only while egress executions run (released just after the result).
        await waitFor(async () => (await iptablesChains(server.ownerId)).length === 0 && netnsOf(server.ownerId).length === 0, 20_000, 'egress resources released');
      });

      it('while an egress execution runs its firewall chains (and the sandbox its network namespace) exist, and after it none', async () => {
        const abort = new AbortController();
        const running = client.execute({ image: 'kindling/base', command: ['sleep', '60'], network: 'egress', timeoutMs: 90_000 }, { signal: abort.signal }).catch((error: unknown) => error);
        try {
          // Seen existing first: the checks of their removal (here and after the suite) would pass vacuously otherwise.
          // The chains come first, then (sandbox executor) the execution's network namespace.
          await waitFor(async () => (await iptablesChains(server.ownerId)).length > 0 && (executor !== 'sandbox' || netnsOf(server.ownerId).length > 0), 30_000, 'egress chains (and a network namespace) while the execution runs');
        } finally {
          abort.abort();
          await running;
        }
        await waitFor(async () => (await iptablesChains(server.ownerId)).length === 0 && netnsOf(server.ownerId).length === 0, 20_000, 'egress resources released');
      });

      it('network "none" (the default) reaches nothing', async () => {
        const result = await client.execute({ runtime: 'python', code: probeCode([[publicHost!.address, publicHost!.port], [publicHost!.hostAddress, hostServicePort]]) });
        assert.equal(result.exitCode, 0, result.stderr);
        assert.match(line(result.stdout, `${publicHost!.address}:${publicHost!.port}`), /BLOCKED/);
        assert.match(line(result.stdout, `${publicHost!.hostAddress}:${hostServicePort}`), /BLOCKED/);
      });

      it('concurrent egress executions each get through, and the next plain run works', async () => {
        const runs = await Promise.all(
          [0, 1, 2].map(() => client.execute({ runtime: 'python', code: probeCode([[publicHost!.address, publicHost!.port]]), network: 'egress', timeoutMs: 60_000 })),
        );
        for (const r of runs) assert.match(line(r.stdout, `${publicHost!.address}:${publicHost!.port}`), /OPEN/);
        assert.equal((await client.run('python', 'print("fine")')).stdout, 'fine\n');
      });
    });
  }

  describe('a server without the operator allow list', { skip: EXECUTORS[0].unavailable ?? false }, () => {
    it('blocks the documentation-range test host (egress opens public addresses only)', async () => {
      const server = await startTestServer({ executor: 'sandbox' });
      try {
        const client = new Kindling({ url: server.url });
        const result = await client.execute({ runtime: 'python', code: probeCode([[publicHost!.address, publicHost!.port]]), network: 'egress', timeoutMs: 60_000 });
        assert.match(line(result.stdout, `${publicHost!.address}:${publicHost!.port}`), /BLOCKED/);
      } finally {
        await server.stop();
      }
    });
  });
});

describe('network egress: microvm', () => {
  it('is rejected with UNSUPPORTED_NETWORK before any VM starts (its VMs have no NIC)', async () => {
    const { MicroVmExecutor } = await import('../src/executors/microvm/index.js');
    const ex = new MicroVmExecutor({ imagesDir: '/nonexistent', stateDir: '/nonexistent', ownerId: 'nettest', instanceId: 'nettest', prewarmPerShape: 0 });
    try {
      await assert.rejects(
        ex.start({ id: 'x', image: 'kindling/base', command: ['true'], env: {}, workdir: '/work', limits: { timeoutMs: 1000, memoryMb: 64, cpus: 1, pids: 16, outputBytes: 1024, diskMb: 1, openFiles: 64 }, network: 'egress', stdin: false, files: [], labels: {} }),
        (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'UNSUPPORTED_NETWORK' && /no NIC/.test(e.message),
      );
    } finally {
      await ex.destroy();
    }
  });
});
