/**
 * The server's memory stays bounded while a container floods it (see helpers/memory-flood.ts), on the docker executor.
 *
 * Run: node --test --test-concurrency=1 dist/test/memory-bounds-docker.test.js
 */
import { memoryFloodSuite } from './helpers/memory-flood.js';
import { dockerUnavailableReason } from './helpers/server.js';

memoryFloodSuite('docker', await dockerUnavailableReason());
