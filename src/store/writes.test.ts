/** The conformance suite of the control state's writes against a single server's SQLite (the cluster's: test/). */
import { describe } from 'node:test';
import { SqliteStore } from './sqlite.js';
import { SqliteTenantStore } from './tenants-sqlite.js';
import { localFunctionWrites, localTenantWrites } from './writes.js';
import { writesConformance } from './writes-conformance.js';

describe('control state writes: SQLite (a single server)', () => {
  writesConformance(async () => {
    const tenants = new SqliteTenantStore(':memory:');
    const functions = new SqliteStore(':memory:');
    return {
      writes: { ...localTenantWrites(tenants), ...localFunctionWrites(functions) },
      tenants,
      functions,
      close: async () => {
        tenants.close();
        functions.close();
      },
    };
  });
});
