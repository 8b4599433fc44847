import { KindlingError } from '../../core/errors.js';
import type { SandboxCommandRequest } from '../executor.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The checks every executor makes on a command for a persistent sandbox before anything runs (the service validated
 * the request's shape; these are what an executor itself relies on: no NUL in argv, env or work dir, env names a shell
 * accepts, an absolute work dir).
 */
export function checkCommandRequest(request: SandboxCommandRequest): void {
  if (request.command.length === 0 || request.command.some((arg) => arg.includes('\0'))) {
    throw new KindlingError('VALIDATION_FAILED', 'command must be a non-empty list of arguments without NUL', { details: { field: 'command' } });
  }
  for (const [name, value] of Object.entries(request.env)) {
    if (!ENV_NAME.test(name) || value.includes('\0')) throw new KindlingError('VALIDATION_FAILED', `env name "${name}" must match ${ENV_NAME.source}, values without NUL`, { details: { field: 'env' } });
  }
  if (!request.workdir.startsWith('/') || request.workdir.includes('\0')) {
    throw new KindlingError('VALIDATION_FAILED', 'workdir must be an absolute path', { details: { field: 'workdir' } });
  }
}
