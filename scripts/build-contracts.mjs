#!/usr/bin/env node
// Compiles contracts/*.sol with solc-js into dist/contracts/<Name>.json ({abi, bytecode}; part of `npm run build`),
// and the test-only contracts in contracts/test/*.sol (hostile managers and the like, which the tests deploy) into
// dist/contracts/test/<Name>.json; nothing outside the tests loads those. Each file's contract of the same name is the artifact (its interfaces and libraries are not). Skipped when the
// sources and the compiler are those of the last build (a stamp of their hash), since loading solc-js alone takes
// seconds. A compile error fails the build with solc's messages.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const sourceDir = join(root, 'contracts');
const outDir = join(root, 'dist', 'contracts');
const stampFile = join(outDir, '.stamp');
const require = createRequire(import.meta.url);
const solcVersion = require('solc/package.json').version;
// Settings are part of the stamp too: changing them must rebuild.
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
};

const solFiles = (dir) => (existsSync(dir) ? readdirSync(dir).filter((name) => name.endsWith('.sol')).sort() : []);
// Source names are paths relative to contracts/, so a test contract imports a project one as "../KindlingJobs.sol".
const files = [...solFiles(sourceDir), ...solFiles(join(sourceDir, 'test')).map((name) => `test/${name}`)];
const sources = Object.fromEntries(files.map((name) => [name, { content: readFileSync(join(sourceDir, name), 'utf8') }]));
const stamp = createHash('sha256').update(JSON.stringify({ solcVersion, settings, sources })).digest('hex');
const artifactsPresent = files.every((name) => existsSync(join(outDir, name.replace(/\.sol$/, '.json'))));
if (artifactsPresent && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) process.exit(0);

const solc = require('solc');
const output = JSON.parse(solc.compile(JSON.stringify({ language: 'Solidity', sources, settings })));
const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
for (const e of output.errors ?? []) process.stderr.write(e.formattedMessage ?? `${e.severity}: ${e.message}\n`);
if (errors.length > 0) {
  process.stderr.write(`build-contracts: solc ${solcVersion} failed with ${errors.length} error(s)\n`);
  process.exit(1);
}

mkdirSync(join(outDir, 'test'), { recursive: true });
for (const file of files) {
  // "test/X.sol" -> dist/contracts/test/X.json, contract X.
  const out = file.replace(/\.sol$/, '');
  const name = out.split('/').pop();
  const contract = output.contracts?.[file]?.[name];
  if (!contract) {
    process.stderr.write(`build-contracts: ${file} has no contract named ${name}\n`);
    process.exit(1);
  }
  const artifact = { contractName: name, compiler: `solc ${solcVersion}`, abi: contract.abi, bytecode: `0x${contract.evm.bytecode.object}` };
  // Written then renamed, so an interrupted build never leaves a half-written artifact behind.
  writeFileSync(join(outDir, `${out}.json.tmp`), JSON.stringify(artifact, null, 2) + '\n');
  renameSync(join(outDir, `${out}.json.tmp`), join(outDir, `${out}.json`));
}
writeFileSync(stampFile, stamp);
process.stderr.write(`build-contracts: compiled ${files.join(', ')} with solc ${solcVersion}\n`);
