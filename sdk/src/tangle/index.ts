/**
 * `@kindling/sdk/tangle`: the on-chain side of Kindling (the FaaS blueprint's jobs). Needs the `viem` peer dependency;
 * the main entry point does not load it.
 */
export * from './jobs.js';
export * from './abi.js';
export * from './client.js';
