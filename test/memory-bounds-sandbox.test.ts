/**
 * The server's memory stays bounded while a sandbox floods it (see helpers/memory-flood.ts), on the sandbox executor.
 *
 * Run: node --test --test-concurrency=1 dist/test/memory-bounds-sandbox.test.js
 */
import { memoryFloodSuite } from './helpers/memory-flood.js';
import { sandboxUnavailableReason } from './helpers/server.js';

memoryFloodSuite('sandbox', await sandboxUnavailableReason());
