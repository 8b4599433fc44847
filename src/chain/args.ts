/**
 * Turns a job's arguments as JSON (the CLI's `--args`) into the values viem encodes for the job's input ABI: bytes
 * as 0x-hex, integers as JSON numbers or decimal strings, bools, strings, and arrays of those. Every mistake names
 * the job's argument list, so the fix is in the message.
 */
import { formatAbiParams } from 'viem/utils';
import { isHex, type AbiParameter } from 'viem';
import { JOBS, type JobDefinition } from '@kindling/sdk/tangle';

export class JobArgsError extends Error {
  override readonly name = 'JobArgsError';
}

export function jobSignature(def: JobDefinition): string {
  return `job ${def.index} (${def.name}) takes [${formatAbiParams(def.inputs as AbiParameter[], { includeName: true })}]`;
}

export function parseJobArgs(jobIndex: number, json: string): unknown[] {
  const def = JOBS[jobIndex];
  if (!Number.isInteger(jobIndex) || !def) throw new JobArgsError(`unknown job ${jobIndex}: the FaaS blueprint has jobs 0-${JOBS.length - 1}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (error) {
    throw new JobArgsError(`--args is not JSON (${(error as Error).message}); ${jobSignature(def)}, as a JSON array`);
  }
  if (!Array.isArray(parsed)) throw new JobArgsError(`--args must be a JSON array; ${jobSignature(def)}`);
  if (parsed.length !== def.inputs.length) {
    throw new JobArgsError(`--args has ${parsed.length} value(s), ${jobSignature(def)}`);
  }
  return def.inputs.map((param, i) => {
    try {
      return convert(param.type, parsed[i]);
    } catch (error) {
      throw new JobArgsError(`argument ${i} (${param.name ?? '?'}): ${(error as Error).message}; ${jobSignature(def)}`);
    }
  });
}

function convert(type: string, value: unknown): unknown {
  if (type.endsWith('[]')) {
    if (!Array.isArray(value)) throw new Error(`expected a JSON array for ${type}, got ${JSON.stringify(value)}`);
    return value.map((item) => convert(type.slice(0, -2), item));
  }
  if (type === 'string') {
    if (typeof value !== 'string') throw new Error(`expected a string, got ${JSON.stringify(value)}`);
    return value;
  }
  if (type === 'bool') {
    if (typeof value !== 'boolean') throw new Error(`expected true or false, got ${JSON.stringify(value)}`);
    return value;
  }
  if (type === 'bytes' || /^bytes\d+$/.test(type)) {
    if (typeof value !== 'string' || !isHex(value, { strict: true }) || value.length % 2 !== 0) {
      throw new Error(`expected 0x-hex bytes (e.g. "0x68690a"), got ${JSON.stringify(value)}`);
    }
    return value;
  }
  const int = /^(u?)int(\d+)$/.exec(type);
  if (int) {
    const ok = (typeof value === 'number' && Number.isSafeInteger(value)) || (typeof value === 'string' && /^-?\d+$/.test(value));
    if (!ok) throw new Error(`expected a whole number (JSON number or decimal string) for ${type}, got ${JSON.stringify(value)}`);
    const big = BigInt(value as number | string);
    const bits = BigInt(int[2]!);
    const [min, max] = int[1] ? [0n, 2n ** bits - 1n] : [-(2n ** (bits - 1n)), 2n ** (bits - 1n) - 1n];
    if (big < min || big > max) throw new Error(`${big} is out of range for ${type} (${min}..${max})`);
    // viem takes numbers for integers of up to 48 bits and bigints above.
    return Number(bits) <= 48 ? Number(big) : big;
  }
  throw new Error(`unsupported ABI type ${type}`);
}

/** JSON for decoded values: bigints (uint64 and wider) as decimal strings, bytes as 0x-hex, the rest as is. */
export function toJson(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map(toJson);
  return value;
}
