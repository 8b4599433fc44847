/**
 * The process entry point and the only module that reads the environment. Everything else takes typed options.
 */
import { readFileSync } from 'node:fs';
import { buildProgram } from './cli/index.js';

const env = process.env;
const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = buildProgram({
  version: packageJson.version,
  serve: {
    port: Number(env.KINDLING_PORT ?? 8080),
    host: env.KINDLING_HOST ?? '127.0.0.1',
    dataDir: env.KINDLING_DATA_DIR ?? '/var/lib/kindling/data',
    imagesDir: env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images',
    adminKey: env.KINDLING_ADMIN_KEY || undefined,
    metricsToken: env.KINDLING_METRICS_TOKEN || undefined,
    otlpHeaders: env.KINDLING_OTLP_HEADERS || undefined,
    logLevel: env.KINDLING_LOG_LEVEL ?? 'info',
    dockerSocketPath: env.DOCKER_SOCKET ?? '/var/run/docker.sock',
    buildCaFile: env.NODE_EXTRA_CA_CERTS ?? '',
    microvm: {
      ...(env.KINDLING_MICROVM_ASSETS_DIR ? { assetsDir: env.KINDLING_MICROVM_ASSETS_DIR } : {}),
      ...(env.KINDLING_MICROVM_DRIVER === 'firecracker' || env.KINDLING_MICROVM_DRIVER === 'qemu' ? { driver: env.KINDLING_MICROVM_DRIVER } : {}),
    },
    version: packageJson.version,
  },
  client: {
    url: env.KINDLING_URL ?? `http://127.0.0.1:${env.KINDLING_PORT ?? 8080}`,
    apiKey: env.KINDLING_API_KEY || env.KINDLING_ADMIN_KEY || undefined,
  },
});

program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`kindling: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
});
