/**
 * The options that secure a node's NATS connection (`serve --cluster` and `cluster status`): TLS files and one way to
 * authenticate. Secrets come from files, never from the command line, so that they do not show in process lists.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { ClusterSecurity } from '../cluster/connection.js';

export function addClusterSecurityOptions(command: Command): Command {
  return command
    .option('--cluster-tls-ca <file>', 'with --cluster: PEM file of the CA that signed the NATS servers\' certificates (TLS is then required; without it tls:// URLs use the system CAs)')
    .option('--cluster-tls-cert <file>', 'with --cluster: PEM client certificate for mutual TLS (with --cluster-tls-key)')
    .option('--cluster-tls-key <file>', 'with --cluster: PEM private key of --cluster-tls-cert')
    .option('--cluster-user <name>', 'with --cluster: NATS user name (with --cluster-password-file)')
    .option('--cluster-password-file <file>', 'with --cluster: file holding the NATS password of --cluster-user')
    .option('--cluster-token-file <file>', 'with --cluster: file holding a NATS authentication token')
    .option('--cluster-creds <file>', 'with --cluster: NATS credentials file (user JWT and nkey seed, e.g. made by nsc)');
}

function readSecret(option: string, file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`${option}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  // Files written with echo end in a newline that is not part of the secret.
  const value = text.replace(/\r?\n$/, '');
  if (value === '') throw new Error(`${option}: ${file} is empty`);
  return value;
}

/** The security settings from parsed options: undefined when none is given. Throws with a message that says how to fix a bad combination. */
export function clusterSecurity(options: Record<string, unknown>): ClusterSecurity | undefined {
  const text = (name: string): string | undefined => {
    const value = options[name];
    return typeof value === 'string' && value !== '' ? value : undefined;
  };
  const [ca, cert, key] = [text('clusterTlsCa'), text('clusterTlsCert'), text('clusterTlsKey')];
  const [user, passwordFile, tokenFile, credsFile] = [text('clusterUser'), text('clusterPasswordFile'), text('clusterTokenFile'), text('clusterCreds')];
  if ((cert === undefined) !== (key === undefined)) throw new Error('--cluster-tls-cert and --cluster-tls-key go together (a client certificate and its key)');
  if ((user === undefined) !== (passwordFile === undefined)) throw new Error('--cluster-user and --cluster-password-file go together');
  const methods = [user, tokenFile, credsFile].filter((value) => value !== undefined).length;
  if (methods > 1) throw new Error('choose one way to authenticate to NATS: --cluster-user with --cluster-password-file, --cluster-token-file or --cluster-creds');
  const security: ClusterSecurity = {};
  if (ca !== undefined || cert !== undefined) {
    security.tls = {
      ...(ca === undefined ? {} : { ca: readSecret('--cluster-tls-ca', ca) }),
      ...(cert === undefined || key === undefined ? {} : { cert: readSecret('--cluster-tls-cert', cert), key: readSecret('--cluster-tls-key', key) }),
    };
  }
  if (user !== undefined && passwordFile !== undefined) security.auth = { user, password: readSecret('--cluster-password-file', passwordFile) };
  else if (tokenFile !== undefined) security.auth = { token: readSecret('--cluster-token-file', tokenFile) };
  else if (credsFile !== undefined) security.auth = { creds: readSecret('--cluster-creds', credsFile) };
  return security.tls === undefined && security.auth === undefined ? undefined : security;
}
