/**
 * What to tell the deployer when a dependency build fails. A build whose installer could not reach its registry is
 * not fixed by editing package.json: that is the operator's network (the build sandbox reaches only public addresses
 * by default; a private DNS resolver or registry mirror needs --egress-allow). The installer's own log says which.
 */
/** The installers builds run (BuildKind of builds.ts). */
export type BuildKind = 'npm' | 'pip' | 'compile';

/** Lines of npm's and pip's logs that mean the registry or index was not reached (names, refusals, timeouts). */
const UNREACHABLE =
  /\b(EAI_AGAIN|ENOTFOUND|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH)\b|Temporary failure in name resolution|Name or service not known|Failed to establish a new connection|NewConnectionError|ConnectTimeoutError|Network is unreachable/;

/** go's words when the bundle needs a module it does not carry (checked by go.sum first, then looked up). */
const GO_MODULE_MISSING = /module lookup disabled by GOPROXY=off|missing go\.sum entry|cannot find module providing package|no required module provides package/;

/** cargo's words when a crate is neither vendored nor a path dependency (rust bundles build with --offline). */
const CRATE_MISSING = /--offline|offline mode|no matching package named|failed to get `[^`]+` as a dependency/;

export function buildFailureAdvice(kind: BuildKind, log: string, source: string): string {
  if (kind === 'compile') {
    if (CRATE_MISSING.test(log)) {
      return 'the bundle needs crates it does not carry, and builds fetch none: vendor them (cargo vendor, add the .cargo/config.toml it prints, then deploy the directory with Cargo.lock and vendor/), or use path dependencies';
    }
    if (GO_MODULE_MISSING.test(log) && source === 'off') {
      return "the bundle needs Go modules it does not carry and this server's builds fetch none (--build-go-proxy off): vendor them (go mod tidy && go mod vendor, then deploy the directory with go.sum and vendor/), or ask the operator for --build-go-proxy";
    }
    if (GO_MODULE_MISSING.test(log)) return 'the bundle\'s go.mod / go.sum do not name every module it imports: run go mod tidy and deploy with go.sum (or vendor them: go mod vendor)';
    if (UNREACHABLE.test(log)) {
      return `the build could not reach the Go module proxy ${source}: ask the operator (--build-go-proxy, --egress-allow), or vendor the modules (go mod vendor)`;
    }
    return 'fix the compile errors the compiler reports (below) and deploy again';
  }
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
