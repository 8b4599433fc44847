/**
 * `kindling chain deploy|register|submit|result|remove-operator|withdraw`: drive a chain with the FaaS blueprint's jobs from a shell. Every
 * command prints one JSON object on stdout. Exit codes: 0 done; 1 the job's result is an error envelope (still
 * printed); 2 bad usage or input, or the chain refused (revert, unreachable RPC); 3 no result yet (`result`).
 */
import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import type { Address, Hex } from 'viem';
import type { RegisterOperatorOptions } from '../chain/register.js';
import { DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS } from '../chain/defaults.js';

/** Exit code of `chain result` when the call has no result yet. */
export const EXIT_NO_RESULT = 3;
/** Exit code of `chain result` when the result is an error envelope. */
export const EXIT_JOB_ERROR = 1;

/** A mistake in the command line or its input: exit 2, the message says how to fix it. */
export class UsageError extends Error {}

// viem takes seconds to load on a busy machine: the actions (chain-actions.ts) load it only when a chain command
// runs, so every other command starts as fast as before.
const actions = () => import('./chain-actions.js');

/** Registers the wallet's account as an operator of a service (`kindling chain register`; the operator uses it too). */
export async function registerOperator(options: RegisterOperatorOptions): Promise<{ operator: Address; txHash: Hex }> {
  return (await import('../chain/register.js')).registerOperator(options);
}

/**
 * Reads a private key file: the key as 0x-prefixed hex (64 hex digits), surrounding whitespace ignored. A key that
 * others on the machine can read is everyone's key: warn (stderr) when the file is group- or world-readable.
 */
export function readKeyFile(path: string, warn: (message: string) => void = (m) => void process.stderr.write(`kindling: warning: ${m}\n`)): Hex {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read the key file ${path}: ${(error as Error).message}`);
  }
  const key = text.trim();
  if (!/^0x[0-9a-fA-F]{64}$/.test(key)) {
    throw new UsageError(`the key file ${path} must hold one private key as 0x-prefixed hex (0x + 64 hex digits)`);
  }
  if ((statSync(path).mode & 0o077) !== 0) warn(`the key file ${path} is readable by other users; restrict it with chmod 600 ${path}`);
  return key as Hex;
}

function parseAddress(name: string): (value: string) => Address {
  return (value) => {
    if (!/^0x[0-9a-fA-F]{40}$/.test(value)) throw new UsageError(`${name} must be a 0x address (40 hex digits), got "${value}"`);
    return value as Address;
  };
}

function parseUint(name: string, max = 2n ** 64n - 1n): (value: string) => bigint {
  return (value) => {
    if (!/^\d+$/.test(value) || BigInt(value) > max) throw new UsageError(`${name} must be a whole number 0..${max}, got "${value}"`);
    return BigInt(value);
  };
}

/** Bad usage and input exit 2 with one line on stderr; so does a chain error (revert, unreachable node). */
async function run(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (error) {
    const message = error instanceof Error ? error.message.split('\n').slice(0, 3).join(' ') : String(error);
    process.stderr.write(`kindling: ${message}\n`);
    process.exitCode = 2;
  }
}

export interface DeployCommandOptions {
  rpc: string;
  keyFile: string;
  assignmentTimeoutS?: bigint;
}
export interface RegisterCommandOptions {
  rpc: string;
  keyFile: string;
  jobsContract: Address;
  serviceId: bigint;
  capacity?: bigint;
  priceWei?: bigint;
}
export interface SubmitCommandOptions {
  rpc: string;
  keyFile: string;
  jobsContract: Address;
  serviceId: bigint;
  job: bigint;
  args: string;
  valueWei?: bigint;
}
export interface RemoveOperatorCommandOptions {
  rpc: string;
  keyFile: string;
  serviceManager: Address;
  operator: Address;
}
export interface WithdrawCommandOptions {
  rpc: string;
  keyFile: string;
  serviceManager: Address;
}
export interface ResultCommandOptions {
  rpc: string;
  jobsContract: Address;
  serviceId: bigint;
  callId: bigint;
  waitMs?: bigint;
  fromBlock?: bigint;
}

export function registerChainCommands(program: Command): void {
  const chain = program.command('chain').description('Deploy, register, submit jobs and read results on an EVM chain (the FaaS blueprint jobs)');

  chain
    .command('deploy')
    .description('Deploy KindlingJobs and a FaaSServiceManager, create a service; prints {"jobsContract","serviceManager","serviceId"}')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--key-file <path>', 'file holding the deployer private key (0x-hex)')
    .option(
      '--assignment-timeout-s <seconds>',
      `seconds an operator has to answer before anyone may reassign the job (default ${DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS})`,
      parseUint('--assignment-timeout-s'),
    )
    .action((options: DeployCommandOptions) => run(async () => (await actions()).deploy(options)));

  chain
    .command('register')
    .description('Register the key as an operator of a service (again: updates capacity and price); prints {"operator","serviceId"}')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--key-file <path>', 'file holding the operator private key (0x-hex)')
    .requiredOption('--jobs-contract <address>', 'the jobs contract (KindlingJobs)', parseAddress('--jobs-contract'))
    .requiredOption('--service-id <n>', 'the service', parseUint('--service-id'))
    .option('--capacity <n>', 'jobs taken at once before less loaded operators are preferred (default 0: the manager default, 4)', parseUint('--capacity', 0xffffffffn))
    .option('--price-wei <n>', 'price per job in wei: jobs paying less are not assigned to this operator (default 0)', parseUint('--price-wei', 2n ** 256n - 1n))
    .action((options: RegisterCommandOptions) => run(async () => (await actions()).register(options)));

  chain
    .command('submit')
    .description('Submit a job; prints {"callId","txHash","blockNumber"}')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--key-file <path>', 'file holding the customer private key (0x-hex)')
    .requiredOption('--jobs-contract <address>', 'the jobs contract (ITangleJobs)', parseAddress('--jobs-contract'))
    .requiredOption('--service-id <n>', 'the service', parseUint('--service-id'))
    .requiredOption('--job <index>', 'the job index (0-11)', parseUint('--job', 255n))
    .requiredOption('--args <json>', "the job's ABI arguments in order, as a JSON array (bytes as 0x-hex, integers as numbers or decimal strings)")
    .option('--value-wei <n>', 'payment sent with the job, in wei: must cover an operator\'s price; paid to the operator that answers (default 0)', parseUint('--value-wei', 2n ** 256n - 1n))
    .action((options: SubmitCommandOptions) => run(async () => (await actions()).submit(options)));

  chain
    .command('result')
    .description(
      'Print a job\'s result: {"callId","operator","outputs"}, {"callId","operator","error"} (exit 1) or {"callId","operator","ref"}; exit 3 when there is none yet',
    )
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--jobs-contract <address>', 'the jobs contract (ITangleJobs)', parseAddress('--jobs-contract'))
    .requiredOption('--service-id <n>', 'the service', parseUint('--service-id'))
    .requiredOption('--call-id <n>', 'the call id `chain submit` printed', parseUint('--call-id'))
    .option('--wait-ms <ms>', 'wait up to this long for the result (default 0: look once)', parseUint('--wait-ms', BigInt(Number.MAX_SAFE_INTEGER)))
    .option('--from-block <n>', 'search result events from this block on (the submission block is enough; default 0)', parseUint('--from-block'))
    .action((options: ResultCommandOptions) => run(async () => (await actions()).result(options)));

  chain
    .command('remove-operator')
    .description('As the service manager\'s owner (its deployer), stop giving jobs to an operator and refuse its re-registration; prints {"operator","removed"}')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--key-file <path>', 'file holding the private key that deployed the service manager (0x-hex)')
    .requiredOption('--service-manager <address>', 'the service manager (FaaSServiceManager)', parseAddress('--service-manager'))
    .requiredOption('--operator <address>', 'the operator to remove', parseAddress('--operator'))
    .action((options: RemoveOperatorCommandOptions) => run(async () => (await actions()).removeOperator(options)));

  chain
    .command('withdraw')
    .description('Withdraw the payments credited to the key\'s operator for answered jobs; prints {"operator","amountWei"}')
    .requiredOption('--rpc <url>', 'JSON-RPC URL of the chain')
    .requiredOption('--key-file <path>', 'file holding the operator private key (0x-hex)')
    .requiredOption('--service-manager <address>', 'the service manager (FaaSServiceManager)', parseAddress('--service-manager'))
    .action((options: WithdrawCommandOptions) => run(async () => (await actions()).withdraw(options)));
}
