/**
 * Operator processes for the chain tests: the real CLI (`node dist/src/main.js operator ...`) with its own data dir,
 * against a local anvil with the contracts deployed by the test. Each started process is stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPublicClient, createWalletClient, defineChain, http, type Chain, type Hex, type PublicClient } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { TangleClient } from '@kindling/sdk/tangle';
import { deployKindlingChain, type KindlingChainDeployment } from '../../src/chain/deploy.js';
import type { Anvil } from './anvil.js';
import { IMAGES_DIR } from './server.js';
import { retryUntil, waitFor } from './wait.js';

const MAIN = fileURLToPath(new URL('../../src/main.js', import.meta.url));

export interface ChainSetup {
  anvil: Anvil;
  deployment: KindlingChainDeployment;
  publicClient: PublicClient;
  /** A customer (anvil's key 9) submitting jobs. */
  customer: TangleClient;
}

export function chainOf(anvil: Anvil): Chain {
  return defineChain({ id: anvil.chainId, name: 'anvil', nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [anvil.rpcUrl] } } });
}

export async function deployOn(anvil: Anvil, assignmentTimeoutSeconds = 300): Promise<ChainSetup> {
  const chain = chainOf(anvil);
  const publicClient = createPublicClient({ chain, transport: http(anvil.rpcUrl), pollingInterval: 50 }) as PublicClient;
  const deployer = createWalletClient({ chain, transport: http(anvil.rpcUrl), account: privateKeyToAccount(anvil.keys[0]!) });
  const deployment = await deployKindlingChain({ walletClient: deployer, publicClient, assignmentTimeoutSeconds });
  const customerWallet = createWalletClient({ chain, transport: http(anvil.rpcUrl), account: privateKeyToAccount(anvil.keys[9]!) });
  const customer = new TangleClient({ publicClient, walletClient: customerWallet, jobsContract: deployment.jobsContract });
  return { anvil, deployment, publicClient, customer };
}

export interface OperatorProcess {
  address: Hex;
  dataDir: string;
  url: string | null;
  child: ChildProcess;
  /** Every line it logged (JSON). */
  lines: string[];
  /** SIGTERM (drain) and wait for the exit. */
  stop(): Promise<number | null>;
  /** SIGKILL: no drain. */
  kill9(): Promise<void>;
  /** Removes its data dir (after stop/kill9). */
  remove(): Promise<void>;
}

export async function startOperator(setup: ChainSetup, keyIndex: number, options: { dataDir?: string; args?: string[] } = {}): Promise<OperatorProcess> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'kindling-operator-')));
  await chmod(dataDir, 0o755);
  const keyFile = join(dataDir, 'operator.key');
  await writeFile(keyFile, setup.anvil.keys[keyIndex]!, { mode: 0o600 });
  const args = [
    MAIN, 'operator',
    '--rpc', setup.anvil.rpcUrl,
    '--chain-id', String(setup.anvil.chainId),
    '--key-file', keyFile,
    '--jobs-contract', setup.deployment.jobsContract,
    '--service-manager', setup.deployment.serviceManager,
    '--service-id', setup.deployment.serviceId.toString(),
    '--data-dir', dataDir,
    '--images-dir', IMAGES_DIR,
    '--port', '0',
    '--executor', 'sandbox',
    '--enable-executors', '',
    '--prewarm', '0',
    '--generic-sandboxes', '0',
    '--poll-interval-ms', '100',
    '--confirmations', '0',
    ...(options.args ?? []),
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buffered = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = once(child, 'exit');
  const process_: OperatorProcess = {
    address: privateKeyToAccount(setup.anvil.keys[keyIndex]!).address,
    dataDir,
    url: null,
    child,
    lines,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      return code;
    },
    async kill9() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
    async remove() {
      // The sandbox executor's private mounts are detached lazily at exit: the dir may be busy for a moment.
      await retryUntil(() => rm(dataDir, { recursive: true, force: true }), { timeoutMs: 30_000, intervalMs: 100, what: `removing ${dataDir}` });
    },
  };
  try {
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`the operator exited (${child.exitCode}):\n${stderr}\n${lines.join('\n')}`);
      return lines.some((line) => line.includes('"operator started"'));
    }, { timeoutMs: 60_000, intervalMs: 50, what: 'the operator to start' });
  } catch (error) {
    await process_.kill9();
    if (!options.dataDir) await process_.remove();
    throw error;
  }
  const listening = lines.map((line) => JSON.parse(line) as { msg?: string; url?: string }).find((line) => line.msg === 'Kindling is listening');
  process_.url = listening?.url ?? null;
  return process_;
}

/** The parsed log lines with this message. */
export function logged(operator: OperatorProcess, msg: string): Record<string, unknown>[] {
  return operator.lines.flatMap((line) => {
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>;
      return parsed.msg === msg ? [parsed] : [];
    } catch {
      return [];
    }
  });
}
