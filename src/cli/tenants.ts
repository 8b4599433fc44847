import type { Command } from 'commander';
import type { TenantInfo, TenantQuotas } from '@kindling/sdk';
import { clientFrom, guarded } from './functions.js';
import { parseNumber } from './options.js';
import { clientOptions, type ClientDefaults } from './run.js';

/** Quota flags shared by `tenants create` and `tenants update`: flag, quota field, what it means. */
const QUOTA_FLAGS: [string, keyof TenantQuotas, string][] = [
  ['--max-concurrency <n>', 'maxConcurrency', 'executions running at once'],
  ['--max-concurrent-builds <n>', 'maxConcurrentBuilds', 'dependency builds running at once'],
  ['--rps <n>', 'requestsPerSecond', 'requests a second (token bucket refill rate)'],
  ['--burst <n>', 'burst', 'token bucket size'],
  ['--max-memory-mb <mb>', 'maxMemoryMb', 'cap on memoryMb'],
  ['--max-timeout-ms <ms>', 'maxTimeoutMs', 'cap on timeoutMs'],
  ['--max-cpus <n>', 'maxCpus', 'cap on cpus'],
  ['--max-pids <n>', 'maxPids', 'cap on pids'],
  ['--max-open-files <n>', 'maxOpenFiles', 'cap on openFiles'],
  ['--max-output-bytes <n>', 'maxOutputBytes', 'cap on outputBytes'],
  ['--max-disk-mb <mb>', 'maxDiskMb', 'cap on diskMb'],
  ['--max-payload-bytes <n>', 'maxPayloadBytes', 'largest request body'],
  ['--max-function-versions <n>', 'maxFunctionVersions', 'function versions kept, all functions together'],
  ['--max-code-bytes <n>', 'maxCodeBytes', 'bytes of code of the kept versions'],
  ['--max-queued-payload-bytes <n>', 'maxQueuedPayloadBytes', 'bytes of queued async payloads'],
  ['--max-image-bytes <n>', 'maxImageBytes', 'bytes of custom images'],
  ['--max-sandboxes <n>', 'maxSandboxes', 'persistent sandboxes running at once'],
  ['--max-paused-sandboxes <n>', 'maxPausedSandboxes', 'persistent sandboxes paused at once'],
  ['--max-sandbox-memory-mb <mb>', 'maxSandboxMemoryMb', 'memoryMb of live sandboxes, summed'],
  ['--max-sandbox-disk-mb <mb>', 'maxSandboxDiskMb', 'diskMb of kept sandbox disks, summed'],
  ['--max-snapshot-bytes <n>', 'maxSnapshotBytes', 'bytes of snapshots'],
];

function withQuotaFlags(command: Command): Command {
  for (const [flag, , what] of QUOTA_FLAGS) command.option(flag, what, parseNumber(flag.split(' ')[0]!));
  return command;
}

/** commander camel-cases `--max-concurrency` to `maxConcurrency`, `--rps` to `rps`: map back to quota fields. */
function quotasFrom(options: Record<string, unknown>): TenantQuotas {
  const quotas: TenantQuotas = {};
  for (const [flag, field] of QUOTA_FLAGS) {
    const key = flag.split(' ')[0]!.slice(2).replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    const value = options[key];
    if (typeof value === 'number') quotas[field] = value;
  }
  return quotas;
}

const quotaText = (tenant: TenantInfo): string =>
  Object.entries(tenant.effectiveQuotas)
    .filter(([, value]) => value !== null)
    .map(([key, value]) => `${key}=${value}`)
    .join(' ') || 'no caps';

/** Storage used next to the quotas, e.g. `versions 3/1000 code 1200/1073741824 B queued 0/1073741824 B`. */
const usageText = (tenant: TenantInfo): string => {
  const usage = tenant.usage;
  if (usage === undefined) return '';
  const quotas = tenant.effectiveQuotas as Record<string, number | null>;
  const of = (used: number, quota: string): string => `${used}/${quotas[quota] ?? 'no cap'}`;
  return `  versions ${of(usage.functionVersions, 'maxFunctionVersions')} code ${of(usage.codeBytes, 'maxCodeBytes')} B queued ${of(usage.queuedPayloadBytes, 'maxQueuedPayloadBytes')} B${usage.imageBytes === undefined ? '' : ` images ${of(usage.imageBytes, 'maxImageBytes')} B`}`;
};

/** `kindling tenants create|list|get|update|delete|me`, `kindling keys create|list|revoke` (admin key). */
export function registerTenantCommands(program: Command, defaults: ClientDefaults): void {
  const tenants = program.command('tenants').description('tenants and their quotas (admin key; `tenants me` with any key)');
  clientOptions(withQuotaFlags(tenants.command('create').description('create a tenant; prints its API key once').argument('<name>').option('--json', 'print JSON')), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const made = await clientFrom(options).tenants.create(name, { quotas: quotasFrom(options) });
        if (options.json) {
          process.stdout.write(`${JSON.stringify(made, null, 2)}\n`);
          return;
        }
        process.stdout.write(`created tenant ${made.name} (${quotaText(made)})\napi key (shown only now): ${made.apiKey}\n`);
        if (made.adminKey) {
          process.stdout.write(`the server had no keys: auth is on now. Admin key (shown only now):\n  export KINDLING_API_KEY=${made.adminKey}\n`);
        }
      }),
  );
  clientOptions(tenants.command('list').description('list tenants').option('--json', 'print JSON'), defaults).action(async (options: Record<string, unknown>) =>
    guarded(async () => {
      const list = await clientFrom(options).tenants.list();
      if (options.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
      else for (const tenant of list) process.stdout.write(`${tenant.name.padEnd(24)} ${tenant.createdAt}  ${quotaText(tenant)}${usageText(tenant)}\n`);
    }),
  );
  clientOptions(tenants.command('get').description('show a tenant as JSON').argument('<name>'), defaults).action(async (name: string, options: Record<string, unknown>) =>
    guarded(async () => {
      process.stdout.write(`${JSON.stringify(await clientFrom(options).tenants.get(name), null, 2)}\n`);
    }),
  );
  clientOptions(
    withQuotaFlags(tenants.command('update').description("change a tenant's quotas (only the flags given); --reset FIELD puts one back to the server default").argument('<name>'))
      .option('--reset <field>', 'quota field to reset (repeatable)', (value: string, previous: string[]) => [...previous, value], [] as string[]),
    defaults,
  ).action(async (name: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const patch: Record<string, number | null> = { ...quotasFrom(options) };
      for (const field of options.reset as string[]) patch[field] = null;
      const tenant = await clientFrom(options).tenants.update(name, patch);
      process.stdout.write(`updated tenant ${tenant.name} (${quotaText(tenant)})\n`);
    }),
  );
  clientOptions(tenants.command('delete').description('delete a tenant: revokes its keys, removes its functions').argument('<name>'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        await clientFrom(options).tenants.delete(name);
        process.stdout.write(`deleted tenant ${name}\n`);
      }),
  );
  clientOptions(tenants.command('me').description("the key's own tenant and quotas (JSON)"), defaults).action(async (options: Record<string, unknown>) =>
    guarded(async () => {
      process.stdout.write(`${JSON.stringify(await clientFrom(options).tenants.me(), null, 2)}\n`);
    }),
  );

  const keys = program.command('keys').description("a tenant's API keys (admin key)");
  clientOptions(keys.command('create').description('a new API key for a tenant; printed once').argument('<tenant>').option('--json', 'print JSON'), defaults).action(
    async (tenant: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const made = await clientFrom(options).keys.create(tenant);
        if (options.json) process.stdout.write(`${JSON.stringify(made, null, 2)}\n`);
        else process.stdout.write(`key ${made.id} for ${made.tenant} (shown only now): ${made.apiKey}\n`);
      }),
  );
  clientOptions(keys.command('list').description("a tenant's keys (never the keys themselves)").argument('<tenant>').option('--json', 'print JSON'), defaults).action(
    async (tenant: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const list = await clientFrom(options).keys.list(tenant);
        if (options.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        else for (const key of list) process.stdout.write(`${key.id}  ${key.prefix}…  ${key.createdAt}  ${key.revokedAt ? `revoked ${key.revokedAt}` : 'active'}${key.admin ? '  admin' : ''}\n`);
      }),
  );
  clientOptions(keys.command('revoke').description('revoke a key (effective at once)').argument('<tenant>').argument('<id>'), defaults).action(
    async (tenant: string, id: string, options: Record<string, unknown>) =>
      guarded(async () => {
        await clientFrom(options).keys.revoke(tenant, id);
        process.stdout.write(`revoked ${id}\n`);
      }),
  );
}
