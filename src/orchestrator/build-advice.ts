/**
 * What to tell the deployer when a dependency build fails. A build whose installer could not reach its registry is
 * not fixed by editing package.json: that is the operator's network (the build sandbox reaches only public addresses
 * by default; a private DNS resolver or registry mirror needs --egress-allow). The installer's own log says which.
 */
/** The installers builds run (BuildKind of builds.ts). */
export type BuildKind = 'npm' | 'pip';

/** Lines of npm's and pip's logs that mean the registry or index was not reached (names, refusals, timeouts). */
const UNREACHABLE =
  /\b(EAI_AGAIN|ENOTFOUND|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH)\b|Temporary failure in name resolution|Name or service not known|Failed to establish a new connection|NewConnectionError|ConnectTimeoutError|Network is unreachable/;

export function buildFailureAdvice(kind: BuildKind, log: string, source: string): string {
  if (UNREACHABLE.test(log)) {
    const option = kind === 'npm' ? '--build-registry' : '--pip-index-url';
    return (
      `the build could not reach ${source} (a name that did not resolve, or a connection refused or timed out): its ` +
      `sandbox reaches only public addresses, so a DNS resolver or registry on a private address needs the server's ` +
      `--egress-allow ADDR/32 (docs/security.md section 17), or ${option} names a mirror it can reach; ask the operator, ` +
      `then deploy again`
    );
  }
  return kind === 'npm'
    ? 'fix package.json / package-lock.json (npm install --package-lock-only regenerates the lockfile) and deploy again'
    : 'fix requirements.txt (every package needs a wheel on the index: sdists are not built) and deploy again';
}
