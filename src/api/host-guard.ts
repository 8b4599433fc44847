/**
 * Which Host and Origin headers the server answers. A web page the operator visits must not be able to use the
 * server: not by sending requests to it from another origin (the browser sends them, with the operator's network
 * position, and a WebSocket has no same-origin protection at all), and not by DNS rebinding (the page's own name made
 * to resolve to the server's address: the browser then treats the server as same-origin, but still sends the page's
 * name as Host). In open local mode either would act as the admin.
 *
 * - Host: an IP address (any: a rebinding request always carries a name, and an address can only be in Host when the
 *   client itself connected to it, e.g. through a port mapping), `localhost`, or a name the operator allowed
 *   (`--allowed-hosts name[:port],...`; the name the server listens on is one). Anything else: 421 HOST_NOT_ALLOWED.
 * - Origin, on requests that change state (POST, PUT, PATCH, DELETE) and on WebSocket upgrades: absent (not a browser:
 *   curl, the SDK, the CLI), the server's own origin (its scheme://host equals the Host header: the console served at
 *   `/`), or an allowed name (a console behind a proxy that rewrites Host). Anything else: 403 FORBIDDEN_ORIGIN.
 *
 * Everything here is a bounded, linear scan of one header: no regular expression that could backtrack.
 */
import { isIP } from 'node:net';
import { KindlingError } from '../core/errors.js';

export interface AllowedHost {
  /** Lower-case name, without a trailing dot. */
  name: string;
  /** Only this port, when given; any port otherwise. */
  port?: number;
}

/** Longest DNS name (RFC 1035); longer Host values are refused without further work. */
const MAX_NAME_CHARS = 253;

/** Parses `--allowed-hosts`: comma-separated `name` or `name:port`. Throws a message saying what is wrong. */
export function parseAllowedHosts(text: string): AllowedHost[] {
  const hosts: AllowedHost[] = [];
  for (const raw of text.split(',')) {
    const entry = raw.trim();
    if (entry === '') continue;
    const parsed = splitAuthority(entry);
    if (parsed === null || !isHostName(parsed.name)) {
      throw new Error(`--allowed-hosts: "${entry.slice(0, 80)}" is not a host name with an optional port (e.g. kindling.example.com or kindling.lan:3000)`);
    }
    hosts.push(parsed.port === undefined ? { name: parsed.name } : { name: parsed.name, port: parsed.port });
  }
  return hosts;
}

/** `host[:port]` (IPv6 in brackets) split into a lower-case name and a port; null when malformed. */
function splitAuthority(authority: string): { name: string; port?: number } | null {
  if (authority.length === 0 || authority.length > MAX_NAME_CHARS + 8) return null;
  let name: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']');
    if (end < 0) return null;
    name = authority.slice(1, end);
    const rest = authority.slice(end + 1);
    if (rest !== '' && !rest.startsWith(':')) return null;
    if (rest !== '') portText = rest.slice(1);
    if (isIP(name) !== 6) return null;
  } else {
    const colon = authority.lastIndexOf(':');
    name = colon < 0 ? authority : authority.slice(0, colon);
    if (colon >= 0) portText = authority.slice(colon + 1);
  }
  name = name.toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  if (portText === undefined) return { name };
  if (portText.length === 0 || portText.length > 5) return null;
  for (const char of portText) if (char < '0' || char > '9') return null;
  const port = Number(portText);
  return port > 65535 ? null : { name, port };
}

/** Letters, digits, dashes and dots, at most 253 characters: the names DNS and /etc/hosts give. */
function isHostName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME_CHARS || name.startsWith('.') || name.includes('..')) return false;
  for (const char of name) {
    if (!((char >= 'a' && char <= 'z') || (char >= '0' && char <= '9') || char === '-' || char === '.' || char === '_')) return false;
  }
  return true;
}

const DEFAULT_PORTS: Record<string, number> = { 'http:': 80, 'https:': 443 };

export class HostGuard {
  private readonly allowed: readonly AllowedHost[];

  /** `allowed`: the operator's names (--allowed-hosts) and the name the server listens on, if it is one. */
  constructor(allowed: readonly AllowedHost[]) {
    this.allowed = allowed;
  }

  /** The names a listening address adds: a host name (not an address, not a wildcard) is the server's own. */
  static listeningName(host: string): AllowedHost[] {
    const parsed = splitAuthority(host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);
    return parsed !== null && isIP(parsed.name) === 0 && isHostName(parsed.name) ? [{ name: parsed.name }] : [];
  }

  /** Throws 421 HOST_NOT_ALLOWED for a Host header naming something other than this server. */
  checkHost(host: string | undefined): void {
    // No Host at all (HTTP/1.0): not a browser, and no name to rebind.
    if (host === undefined) return;
    const parsed = splitAuthority(host);
    if (parsed !== null && (isIP(parsed.name) !== 0 || parsed.name === 'localhost' || this.isAllowedName(parsed.name, parsed.port))) return;
    throw new KindlingError(
      'HOST_NOT_ALLOWED',
      `the Host header "${host.slice(0, 80)}" is not a name of this server (IP addresses and localhost are; other names only when the server is started with --allowed-hosts NAME[:PORT]); this guards against DNS rebinding`,
    );
  }

  /**
   * Throws 403 FORBIDDEN_ORIGIN for a browser request (it carries Origin) from a page of another origin. `host` has
   * passed checkHost.
   */
  checkOrigin(origin: string | undefined, host: string | undefined): void {
    if (origin === undefined) return;
    if (this.isOwnOrigin(origin, host)) return;
    throw new KindlingError(
      'FORBIDDEN_ORIGIN',
      `a web page of another origin (${origin.slice(0, 80)}) may not change anything on this server or open a WebSocket to it; use the console at this server's own address, or start the server with --allowed-hosts naming that page's host`,
    );
  }

  private isOwnOrigin(origin: string, host: string | undefined): boolean {
    // A sandboxed frame, a file:// page or a redirect across origins sends the opaque "null": never ours.
    if (origin.length > MAX_NAME_CHARS + 16) return false;
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return false;
    }
    const defaultPort = DEFAULT_PORTS[url.protocol];
    if (defaultPort === undefined) return false;
    const port = url.port === '' ? defaultPort : Number(url.port);
    const name = url.hostname.toLowerCase();
    if (host !== undefined) {
      const own = splitAuthority(host);
      const originName = name.startsWith('[') ? name.slice(1, -1) : name;
      if (own !== null && own.name === originName && (own.port ?? defaultPort) === port) return true;
    }
    return this.isAllowedName(name, port);
  }

  private isAllowedName(name: string, port: number | undefined): boolean {
    return this.allowed.some((entry) => entry.name === name && (entry.port === undefined || entry.port === port || (port === undefined && (entry.port === 80 || entry.port === 443))));
  }
}
