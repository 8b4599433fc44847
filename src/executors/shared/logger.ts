/**
 * The one logger shape the executors (and the server that hands them one) agree on: the subset of pino they use, so
 * that a pino child logger fits as it is and tests can pass a recorder.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const noopLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
