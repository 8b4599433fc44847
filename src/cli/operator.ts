/**
 * `kindling operator`: the server of `kindling serve` (every serve option applies) plus the chain operator, in one
 * process (docs/operator.md). `kindling serve --operator-config FILE` does the same with the operator's options in a
 * JSON file (readOperatorConfig).
 */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import type { Address } from 'viem';
import { DEFAULT_CHAIN_TENANT_QUOTAS, DEFAULT_OPERATOR_SETTINGS } from '../operator/defaults.js';
import type { OperatorSettings } from '../operator/service.js';
import { addServeOptions, runServe, type ServeDefaults } from './serve.js';

const whole = (name: string, min = 0) => (value: string): number => {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < min) throw new Error(`${name} must be a whole number >= ${min}, got "${value}"`);
  return parsed;
};

const address = (name: string) => (value: string): Address => {
  // The shape viem's isAddress checks without a checksum; viem itself is not loaded for option parsing (CLI start-up).
  if (!/^0x[0-9a-fA-F]{40}$/.test(value)) throw new Error(`${name} must be a contract address (0x and 40 hex digits), got "${value}"`);
  return value as Address;
};

const uint = (name: string) => (value: string): bigint => {
  if (!/^(0|[1-9][0-9]*)$/.test(value)) throw new Error(`${name} must be a whole number >= 0, got "${value}"`);
  return BigInt(value);
};

/** A JSON object of quota fields (those of PATCH /v1/tenants/NAME); their ranges are checked at start-up. */
export const quotasJson = (name: string) => (value: string): Record<string, number> => {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new Error(`${name} must be a JSON object of quota fields, e.g. '{"maxConcurrency":4,"maxTimeoutMs":60000}', got "${value}"`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || Object.values(parsed).some((v) => typeof v !== 'number')) {
    throw new Error(`${name} must be a JSON object of numbers (quota fields of PATCH /v1/tenants/NAME), got "${value}"`);
  }
  return parsed as Record<string, number>;
};

const url = (name: string, schemes: string[]) => (value: string): string => {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new Error(`${name} must be a URL (${schemes.join(' or ')}), got "${value}"`);
  }
  if (!schemes.includes(parsed.protocol.slice(0, -1))) throw new Error(`${name} must be a ${schemes.join(' or ')} URL, got "${value}"`);
  return value;
};

export function registerOperatorCommand(program: Command, defaults: ServeDefaults): void {
  addServeOptions(program.command('operator').description('run the server and a chain operator of a FaaS blueprint service: jobs from the chain, results back (docs/operator.md)'), defaults)
    .requiredOption('--rpc <url>', 'the chain node (HTTP JSON-RPC); read by polling', url('--rpc', ['http', 'https']))
    .option('--ws <url>', 'a WebSocket of the node: new heads wake the operator early (polling goes on without it)', url('--ws', ['ws', 'wss']))
    .requiredOption('--chain-id <n>', 'the chain id the node must report', whole('--chain-id', 1))
    .requiredOption('--key-file <path>', "a file with the operator's private key (64 hex digits); keep it 0600")
    .requiredOption('--jobs-contract <address>', 'the jobs contract (ITangleJobs)', address('--jobs-contract'))
    .requiredOption('--service-manager <address>', "the service's FaaS service manager", address('--service-manager'))
    .requiredOption('--service-id <n>', 'the service to operate', uint('--service-id'))
    .option('--confirmations <n>', 'blocks a job must be under the head before it is read (reorg safety)', whole('--confirmations'), DEFAULT_OPERATOR_SETTINGS.confirmations)
    .option('--capacity <n>', 'jobs run at once; also the capacity registered on chain', whole('--capacity', 1), DEFAULT_OPERATOR_SETTINGS.capacity)
    // Bigint defaults go through Option#default with a description: commander shows a default with JSON.stringify,
    // which throws on a bigint (--help crashed).
    .addOption(new Option('--max-gas <n>', 'gas one transaction may use at most').argParser(uint('--max-gas')).default(DEFAULT_OPERATOR_SETTINGS.maxGas, String(DEFAULT_OPERATOR_SETTINGS.maxGas)))
    .option('--max-result-bytes <n>', 'larger results are served by this server and go on chain as a hash + URL', whole('--max-result-bytes', 64), DEFAULT_OPERATOR_SETTINGS.maxResultBytes)
    .option('--poll-interval-ms <ms>', 'time between reads of the chain', whole('--poll-interval-ms', 10), DEFAULT_OPERATOR_SETTINGS.pollIntervalMs)
    .option('--rpc-batch-size <n>', 'most JSON-RPC requests sent to the node in one HTTP request (those asked at the same moment go together); 0 sends each alone, for a node that refuses batches', whole('--rpc-batch-size'), DEFAULT_OPERATOR_SETTINGS.rpcBatchSize)
    .option('--tx-timeout-ms <ms>', 'a sent transaction not mined within this is taken as dropped or replaced: the nonce is read from the node again and the transaction sent again', whole('--tx-timeout-ms', 1000), DEFAULT_OPERATOR_SETTINGS.txTimeoutMs)
    .option('--start-block <n>', 'first block read on a fresh data dir (e.g. the jobs contract deployment block)', uint('--start-block'))
    .addOption(new Option('--price-per-job-wei <n>', 'the price registered with the operator').argParser(uint('--price-per-job-wei')).default(0n, '0'))
    .option('--chain-tenant-quotas <json>', `quotas of each chain caller's tenant (fields of PATCH /v1/tenants/NAME) over the defaults ${JSON.stringify(DEFAULT_CHAIN_TENANT_QUOTAS)}; applied when a caller's tenant is made (its first job)`, quotasJson('--chain-tenant-quotas'))
    .option('--public-url <url>', "this server's URL as callers reach it (large results' URLs, job 10's URLs); default the listening URL", url('--public-url', ['http', 'https']))
    .action(async (options: Record<string, unknown>) => {
      const settings: OperatorSettings = {
        rpcUrl: options.rpc as string,
        ...(options.ws ? { wsUrl: options.ws as string } : {}),
        chainId: options.chainId as number,
        keyFile: options.keyFile as string,
        jobsContract: options.jobsContract as Address,
        serviceManager: options.serviceManager as Address,
        serviceId: options.serviceId as bigint,
        confirmations: options.confirmations as number,
        capacity: options.capacity as number,
        maxGas: options.maxGas as bigint,
        maxResultBytes: options.maxResultBytes as number,
        pollIntervalMs: options.pollIntervalMs as number,
        txTimeoutMs: options.txTimeoutMs as number,
        rpcBatchSize: options.rpcBatchSize as number,
        pricePerJobWei: options.pricePerJobWei as bigint,
        ...(options.startBlock === undefined ? {} : { startBlock: options.startBlock as bigint }),
        ...(options.publicUrl === undefined ? {} : { publicUrl: options.publicUrl as string }),
        ...(options.chainTenantQuotas === undefined ? {} : { chainTenantQuotas: options.chainTenantQuotas as Record<string, number> }),
      };
      await runServe(options, defaults, settings);
    });
}

/**
 * `--operator-config FILE`: the operator options as JSON, named like OperatorSettings (rpcUrl, wsUrl, chainId,
 * keyFile, jobsContract, serviceManager, serviceId, confirmations, capacity, maxGas, maxResultBytes, pollIntervalMs,
 * txTimeoutMs, rpcBatchSize, startBlock, pricePerJobWei, publicUrl, chainTenantQuotas: an object); numbers that may exceed 2^53 may be strings.
 */
export async function readOperatorConfig(file: string): Promise<OperatorSettings> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`--operator-config ${file}: ${(error as Error).message}`);
  }
  const known = ['rpcUrl', 'wsUrl', 'chainId', 'keyFile', 'jobsContract', 'serviceManager', 'serviceId', 'confirmations', 'capacity', 'maxGas', 'maxResultBytes', 'pollIntervalMs', 'txTimeoutMs', 'rpcBatchSize', 'startBlock', 'pricePerJobWei', 'publicUrl', 'chainTenantQuotas'];
  const unknown = Object.keys(raw).filter((key) => !known.includes(key));
  if (unknown.length > 0) throw new Error(`--operator-config ${file}: unknown field(s) ${unknown.join(', ')}; the fields are ${known.join(', ')}`);
  const field = <T>(name: string, parse: (value: string) => T, required: boolean): T | undefined => {
    const value = raw[name];
    if (value === undefined || value === null) {
      if (required) throw new Error(`--operator-config ${file}: "${name}" is required`);
      return undefined;
    }
    try {
      return parse(String(value));
    } catch (error) {
      throw new Error(`--operator-config ${file}: ${(error as Error).message.replace(/^--[a-z-]+/, `"${name}"`)}`);
    }
  };
  const optional = <T>(name: string, parse: (value: string) => T): Record<string, T> => {
    const value = field(name, parse, false);
    return value === undefined ? {} : { [name]: value };
  };
  return {
    rpcUrl: field('rpcUrl', url('--rpc', ['http', 'https']), true)!,
    chainId: field('chainId', whole('--chain-id', 1), true)!,
    keyFile: field('keyFile', (value) => value, true)!,
    jobsContract: field('jobsContract', address('--jobs-contract'), true)!,
    serviceManager: field('serviceManager', address('--service-manager'), true)!,
    serviceId: field('serviceId', uint('--service-id'), true)!,
    ...optional('wsUrl', url('--ws', ['ws', 'wss'])),
    ...optional('confirmations', whole('--confirmations')),
    ...optional('capacity', whole('--capacity', 1)),
    ...optional('maxGas', uint('--max-gas')),
    ...optional('maxResultBytes', whole('--max-result-bytes', 64)),
    ...optional('pollIntervalMs', whole('--poll-interval-ms', 10)),
    ...optional('txTimeoutMs', whole('--tx-timeout-ms', 1000)),
    ...optional('rpcBatchSize', whole('--rpc-batch-size')),
    ...optional('startBlock', uint('--start-block')),
    ...optional('pricePerJobWei', uint('--price-per-job-wei')),
    ...optional('publicUrl', url('--public-url', ['http', 'https'])),
    ...(raw.chainTenantQuotas === undefined ? {} : { chainTenantQuotas: quotasJsonField(file, raw.chainTenantQuotas) }),
  };
}

function quotasJsonField(file: string, value: unknown): Record<string, number> {
  try {
    return quotasJson('"chainTenantQuotas"')(JSON.stringify(value));
  } catch (error) {
    throw new Error(`--operator-config ${file}: ${(error as Error).message}`);
  }
}
