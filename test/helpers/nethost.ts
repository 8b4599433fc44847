/**
 * Test hosts for network tests: each is a network namespace this test makes, joined to the host by a veth pair, with
 * a tiny HTTP server inside. Its address is routed only on this machine (the host side of the veth holds the /24), so
 * test traffic never leaves it; `create` checks the route before any test sends a packet, and `remove` deletes the
 * namespace, the veth and the server (also after a failure).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const ip = async (...args: string[]): Promise<string> => (await execFileAsync('ip', args)).stdout;

export interface TestHost {
  /** The server's address, e.g. 198.51.100.2. */
  address: string;
  /** The host's address on the test link, e.g. 198.51.100.1 (one of the host's own addresses). */
  hostAddress: string;
  port: number;
  /** What the server answers to GET /. */
  banner: string;
  remove(): Promise<void>;
}

/** Why network tests cannot run here (not root, no ip/iptables), or null. */
export async function netUnavailableReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'network tests need root (they create network namespaces)';
  for (const tool of ['ip', 'iptables']) {
    try {
      await execFileAsync(tool, ['-V']);
    } catch {
      return `${tool} is not installed (apt-get install iproute2 iptables)`;
    }
  }
  return null;
}

/** A network namespace joined to the host by a veth pair: `<prefix>.2/24` inside, `<prefix>.1` on the host side. */
export interface TestNamespace {
  name: string;
  /** The namespace's address. */
  address: string;
  /** The host's address on the test link (one of the host's own addresses). */
  hostAddress: string;
  /** The argv prefix that runs a program in the namespace's network only (mounts and cgroups stay the host's). */
  enter: string[];
  /** Deletes the veth and the namespace (idempotent). */
  remove(): Promise<void>;
}

/**
 * Makes the namespace and its link. Its address is routed only on this machine (the host side of the veth holds the
 * /24): the route is checked before anything is sent, and the namespace is removed again when any step fails.
 */
export async function createTestNamespace(prefix: string): Promise<TestNamespace> {
  const id = randomBytes(3).toString('hex');
  const name = `kindling-test-${id}`;
  const hostIface = `kt${id}h`;
  const address = `${prefix}.2`;
  const hostAddress = `${prefix}.1`;
  const remove = async (): Promise<void> => {
    await ip('link', 'del', hostIface).catch(() => undefined);
    await ip('netns', 'delete', name).catch(() => undefined);
  };
  try {
    await ip('netns', 'add', name);
    await ip('link', 'add', hostIface, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name);
    await ip('addr', 'add', `${hostAddress}/24`, 'dev', hostIface);
    await ip('link', 'set', hostIface, 'up');
    await ip('-n', name, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
    await ip('-n', name, 'link', 'set', 'eth0', 'up');
    await ip('-n', name, 'link', 'set', 'lo', 'up');
    // The guard: the namespace's address must be routed to our veth, never out of the machine.
    const route = JSON.parse(await ip('-j', 'route', 'get', address)) as { dev: string }[];
    if (route[0]?.dev !== hostIface) throw new Error(`${address} is routed via ${route[0]?.dev}, not the test veth ${hostIface}: refusing to run`);
    return { name, address, hostAddress, enter: ['nsenter', `--net=/run/netns/${name}`, '--'], remove };
  } catch (error) {
    await remove();
    throw error;
  }
}

/** Makes a test host at `<prefix>.2/24` (host side `<prefix>.1`), e.g. prefix "198.51.100", serving `banner` on `port`. */
export async function createTestHost(prefix: string, port = 8080): Promise<TestHost> {
  const namespace = await createTestNamespace(prefix);
  const { address, hostAddress } = namespace;
  const banner = `hello from test host ${address} ${namespace.name}`;
  let server: ChildProcess | null = null;
  const remove = async (): Promise<void> => {
    if (server !== null && server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((resolve) => server!.once('exit', resolve));
      server.kill('SIGKILL');
      await exited;
    }
    await namespace.remove();
  };
  try {
    const code = `require('http').createServer((q,s)=>s.end(${JSON.stringify(banner)})).listen(${port},'0.0.0.0',()=>console.log('ready'))`;
    server = spawn('ip', ['netns', 'exec', namespace.name, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    const started = server;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('test host server did not start in 20 s')), 20_000);
      started.stdout!.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
      started.once('exit', (c) => {
        clearTimeout(timer);
        reject(new Error(`test host server exited (${c})`));
      });
    });
    return { address, hostAddress, port, banner, remove };
  } catch (error) {
    await remove();
    throw error;
  }
}
