/**
 * The compiled project contracts (contracts/*.sol), as `scripts/build-contracts.mjs` writes them at build time into
 * dist/contracts/<Name>.json. Read on first use and cached: only the chain commands and tests need them.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Abi, Hex } from 'viem';

export type ContractName = 'KindlingJobs' | 'FaaSServiceManager';

export interface ContractArtifact {
  contractName: ContractName;
  abi: Abi;
  /** Creation bytecode, 0x-prefixed. */
  bytecode: Hex;
}

/** dist/contracts/, next to dist/src/ where this module runs from. */
const ARTIFACTS_DIR = new URL('../../contracts/', import.meta.url);
const cache = new Map<ContractName, ContractArtifact>();

export function loadContract(name: ContractName): ContractArtifact {
  const cached = cache.get(name);
  if (cached) return cached;
  const file = fileURLToPath(new URL(`${name}.json`, ARTIFACTS_DIR));
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(
      `the compiled contract ${file} is missing (${(error as Error).message}): build it with ` +
        '`npm run build` or `node scripts/build-contracts.mjs`',
    );
  }
  const parsed = JSON.parse(text) as { abi?: unknown; bytecode?: unknown };
  if (!Array.isArray(parsed.abi) || typeof parsed.bytecode !== 'string' || !parsed.bytecode.startsWith('0x')) {
    throw new Error(`${file} is not a contract artifact ({abi, bytecode}): rebuild with \`node scripts/build-contracts.mjs\``);
  }
  const artifact: ContractArtifact = { contractName: name, abi: parsed.abi as Abi, bytecode: parsed.bytecode as Hex };
  cache.set(name, artifact);
  return artifact;
}

export const kindlingJobsArtifact = (): ContractArtifact => loadContract('KindlingJobs');
export const serviceManagerArtifact = (): ContractArtifact => loadContract('FaaSServiceManager');
