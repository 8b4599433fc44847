/**
 * A real local chain for tests: anvil from the @foundry-rs/anvil dev dependency on a free port (anvil picks it: port
 * 0, read back from its "Listening on" line), ready once it answers eth_chainId. Its accounts come from anvil's
 * default mnemonic, so `keys` are the well-known funded dev keys (10 of them, 10000 ETH each). Stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { mnemonicToAccount } from 'viem/accounts';
import { bytesToHex, type Hex } from 'viem';
import { retryUntil } from './wait.js';

const DEFAULT_MNEMONIC = 'test test test test test test test test test test test junk';
const ACCOUNTS = 10;

export interface Anvil {
  rpcUrl: string;
  wsUrl: string;
  chainId: number;
  /** The funded dev accounts' private keys, in anvil's order. */
  keys: Hex[];
  pid: number;
  stop(): Promise<void>;
}

export interface AnvilOptions {
  /** Mine a block every this many seconds; default: a block per transaction (instant mining). */
  blockTimeSeconds?: number;
}

/** The platform binary itself (not the npm wrapper, which would be a second process to stop). */
function anvilBinary(): string {
  const require = createRequire(import.meta.url);
  const arch = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
  try {
    return require.resolve(`@foundry-rs/anvil-${process.platform}-${arch}/bin/anvil`);
  } catch {
    return require.resolve('@foundry-rs/anvil/bin.mjs');
  }
}

export async function startAnvil(options: AnvilOptions = {}): Promise<Anvil> {
  const args = ['--host', '127.0.0.1', '--port', '0', '--accounts', String(ACCOUNTS), '--mnemonic', DEFAULT_MNEMONIC];
  if (options.blockTimeSeconds !== undefined) args.push('--block-time', String(options.blockTimeSeconds));
  const child = spawn(anvilBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stop = async (): Promise<void> => stopChild(child);
  try {
    const port = await listeningPort(child);
    const rpcUrl = `http://127.0.0.1:${port}`;
    const chainId = await retryUntil(async () => {
      const response = await fetch(rpcUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
      });
      const body = (await response.json()) as { result?: string };
      if (!body.result) throw new Error(`anvil answered eth_chainId without a result: ${JSON.stringify(body)}`);
      return Number(BigInt(body.result));
    }, { what: 'anvil to answer eth_chainId', intervalMs: 20 });
    const keys = Array.from({ length: ACCOUNTS }, (_, addressIndex) => {
      const key = mnemonicToAccount(DEFAULT_MNEMONIC, { addressIndex }).getHdKey().privateKey;
      if (!key) throw new Error('no private key derived from the mnemonic');
      return bytesToHex(key);
    });
    return { rpcUrl, wsUrl: `ws://127.0.0.1:${port}`, chainId, keys, pid: child.pid!, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Reads anvil's stdout until it says where it listens; fails with its output if it exits first. */
async function listeningPort(child: ChildProcess): Promise<number> {
  let output = '';
  return await new Promise<number>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      const match = /Listening on [\d.]+:(\d+)/.exec(output);
      if (match) {
        child.stdout!.off('data', onData);
        // Keep draining its output so a chatty anvil never blocks on a full pipe.
        child.stdout!.resume();
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code, signal) => reject(new Error(`anvil exited (${code ?? signal}) before listening:\n${output}`)));
    child.once('error', reject);
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  process.kill(child.pid!, 'SIGTERM');
  const timer = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
  }, 5_000);
  await exited;
  clearTimeout(timer);
}
