import type { Executor } from '../executors/executor.js';
import type { Metrics } from './metrics.js';

/**
 * Wraps an executor so that every sandbox it hands out is counted (created, destroyed, failed to create) without the
 * executors knowing about metrics. Prewarmed containers an executor keeps internally are counted when handed out.
 */
export function instrumentExecutor(executor: Executor, metrics: Pick<Metrics, 'onSandbox'>): Executor {
  const name = executor.name;
  // Every method delegates to the executor itself (bound), so its own state never splits between two objects.
  const wrapped: Executor = {
    name,
    probe: () => executor.probe(),
    hasImage: (image) => executor.hasImage(image),
    refreshImages: () => executor.refreshImages(),
    reap: () => executor.reap(),
    close: () => executor.close(),
    destroy: () => executor.destroy(),
    start: () => Promise.reject(new Error('replaced below')),
    ...(executor.sandboxStorage === undefined ? {} : { sandboxStorage: executor.sandboxStorage }),
  };
  wrapped.start = async (spec, options) => {
    let execution;
    try {
      execution = await executor.start(spec, options);
    } catch (error) {
      metrics.onSandbox(name, 'failed', 'execution');
      throw error;
    }
    metrics.onSandbox(name, 'created', 'execution');
    void execution.disposed.then(
      () => metrics.onSandbox(name, 'destroyed', 'execution'),
      () => metrics.onSandbox(name, 'destroyed', 'execution'),
    );
    return execution;
  };
  const createWarm = executor.createWarmSandbox?.bind(executor);
  if (createWarm) {
    wrapped.createWarmSandbox = async (spec, options) => {
      let sandbox;
      try {
        sandbox = await createWarm(spec, options);
      } catch (error) {
        metrics.onSandbox(name, 'failed', 'warm');
        throw error;
      }
      metrics.onSandbox(name, 'created', 'warm');
      void sandbox.disposed.then(
        () => metrics.onSandbox(name, 'destroyed', 'warm'),
        () => metrics.onSandbox(name, 'destroyed', 'warm'),
      );
      return sandbox;
    };
  }
  const createPersistent = executor.createPersistentSandbox?.bind(executor);
  if (createPersistent) {
    wrapped.createPersistentSandbox = async (spec, options) => {
      let sandbox;
      try {
        sandbox = await createPersistent(spec, options);
      } catch (error) {
        metrics.onSandbox(name, 'failed', 'persistent');
        throw error;
      }
      metrics.onSandbox(name, 'created', 'persistent');
      void sandbox.disposed.then(
        () => metrics.onSandbox(name, 'destroyed', 'persistent'),
        () => metrics.onSandbox(name, 'destroyed', 'persistent'),
      );
      return sandbox;
    };
  }
  return wrapped;
}
