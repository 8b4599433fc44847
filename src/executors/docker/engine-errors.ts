/** The Docker engine's failures as the platform's errors: converted once, here, for every call the executor makes. */
import { KindlingError } from '../../core/errors.js';

/** The engine's socket does not answer (not running, restarting): retryable, the watchdog's signal too. */
export function isEngineUnreachable(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'ECONNRESET' || code === 'EPIPE';
}

/** Converts an engine failure of a call about `image` into a KindlingError (a KindlingError is returned as it is). */
export function toKindlingError(error: unknown, image: string): KindlingError {
  if (error instanceof KindlingError) return error;
  const statusCode = (error as { statusCode?: number }).statusCode;
  const message = error instanceof Error ? error.message : String(error);
  if (statusCode === 404 && /image/i.test(message)) {
    return new KindlingError('UNKNOWN_IMAGE', `image ${image} does not exist; run "kindling images list" to see the images this server has`, { cause: error });
  }
  if (isEngineUnreachable(error)) {
    return new KindlingError('EXECUTOR_UNAVAILABLE', 'the Docker engine is not reachable; start dockerd (scripts/setup.sh does) and retry', { cause: error, retryAfterSeconds: 5 });
  }
  return new KindlingError('EXECUTOR_FAILED', `the Docker engine failed: ${message}`, { cause: error, retryAfterSeconds: 1 });
}

