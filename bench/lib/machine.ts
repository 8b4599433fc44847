import { readFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { DOCKER, execText } from './proc.js';

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  os: string;
  dockerVersion: string;
  bwrapVersion: string;
  nodeVersion: string;
  date: string;
  gitSha: string;
  gitDirty: boolean;
}

const orUnknown = (promise: Promise<string>): Promise<string> => promise.then((text) => text.trim() || 'unknown', () => 'unavailable');

export async function machineInfo(repoRoot: string): Promise<MachineInfo> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const osRelease = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const os = /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(osRelease)?.[1] ?? 'unknown';
  const [dockerVersion, bwrapVersion, gitSha, gitStatus] = await Promise.all([
    orUnknown(execText(DOCKER, ['version', '--format', 'server {{.Server.Version}}, client {{.Client.Version}}'], 15_000)),
    orUnknown(execText('bwrap', ['--version'], 5_000)),
    execText('git', ['-C', repoRoot, 'rev-parse', '--short', 'HEAD'], 5_000).then((text) => text.trim(), () => ''),
    execText('git', ['-C', repoRoot, 'status', '--porcelain'], 10_000).then((text) => text.trim(), () => ''),
  ]);
  return {
    cpuModel,
    cores: cpus().length,
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    kernel: release(),
    os,
    dockerVersion,
    bwrapVersion,
    nodeVersion: process.version,
    date: new Date().toISOString(),
    gitSha: gitSha || 'nogit',
    gitDirty: gitSha !== '' && gitStatus !== '',
  };
}

export function machineMarkdown(info: MachineInfo): string {
  return [
    `- CPU: ${info.cpuModel} (${info.cores} cores)`,
    `- Memory: ${info.memoryGiB} GiB`,
    `- OS / kernel: ${info.os}, Linux ${info.kernel}`,
    `- Docker: ${info.dockerVersion}; ${info.bwrapVersion}`,
    `- Node: ${info.nodeVersion}`,
    `- Date: ${info.date}; commit ${info.gitSha}${info.gitDirty ? ' (with uncommitted changes)' : ''}`,
  ].join('\n');
}
