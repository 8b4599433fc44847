/**
 * What tests of npm dependency builds need against the real registry on these machines: the server's egress allow
 * list (name servers, the registry's addresses), the CA the host's npm trusts, and projects whose lockfile npm made.
 */
import { execFileSync } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { readFileSync, writeFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { join } from 'node:path';

/**
 * The host's IPv4 name servers: builds resolve the registry through them, and a resolver on a private address (as on
 * these machines) is denied to egress sandboxes unless the operator opens it, as docs/security.md section 17 says.
 */
export const resolvers = (): string[] =>
  readFileSync('/etc/resolv.conf', 'utf8')
    .split('\n')
    .map((line) => /^nameserver\s+(\S+)/.exec(line.trim())?.[1])
    .filter((ip): ip is string => ip !== undefined && isIPv4(ip) && !ip.startsWith('127.'))
    .map((ip) => `${ip}/32`);

/**
 * The registry's addresses: on these machines registry.npmjs.org resolves to a documentation range (a mirror), which
 * the egress policy denies unless opened; public addresses need nothing, opening them changes nothing.
 */
export const registryAddresses = async (): Promise<string[]> => (await lookup('registry.npmjs.org', { all: true, family: 4 })).map((a) => `${a.address}/32`);

/** The CA bundle this host's own npm trusts (a TLS-inspecting proxy's CA on these machines): builds need it too. */
export const extraCa = (): { build?: { caFile: string } } => (process.env.NODE_EXTRA_CA_CERTS ? { build: { caFile: process.env.NODE_EXTRA_CA_CERTS } } : {});

/** The server options of a test server whose builds reach the npm registry. */
export const registryReach = async (): Promise<{ egressAllow: string[]; build?: { caFile: string } }> => ({ egressAllow: [...resolvers(), ...(await registryAddresses())], ...extraCa() });

/** A package.json with these dependencies and its lockfile, made by npm itself (resolved against the real registry), in `dir`. */
export function npmProject(dir: string, dependencies: Record<string, string>): string {
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', dependencies }, null, 2)}\n`);
  execFileSync('npm', ['install', '--package-lock-only', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'ignore' });
  return dir;
}

/** A package that the registry does not have: a lockfile naming it fails `npm ci` with E404. */
export const MISSING_PACKAGE = 'kindling-no-such-package-4f2a9c';

/** Makes `dir`'s package.json + lockfile name MISSING_PACKAGE (npm ci fails with E404). */
export function brokenLock(dir: string): void {
  const name = MISSING_PACKAGE;
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', dependencies: { [name]: '1.0.0' } })}\n`);
  writeFileSync(
    join(dir, 'package-lock.json'),
    `${JSON.stringify({
      name: 'app',
      version: '1.0.0',
      lockfileVersion: 3,
      requires: true,
      packages: {
        '': { name: 'app', version: '1.0.0', dependencies: { [name]: '1.0.0' } },
        [`node_modules/${name}`]: { version: '1.0.0', resolved: `https://registry.npmjs.org/${name}/-/${name}-1.0.0.tgz` },
      },
    })}\n`,
  );
}
