export * from './errors.js';
export * from './ids.js';
export * from './clock.js';
export * from './types.js';
