/** The scale knobs of the density, burst and throughput groups, parsed from `npm run bench` options. */
import type { BenchScale } from './context.js';

export const SCALE_USAGE = '[--density-n N (200)] [--idle-ms MS (10000)] [--burst 100,1000] [--burst-functions N (100)] [--step-ms MS (5000)]';

const DEFAULTS: BenchScale = { densityN: 200, idleMs: 10_000, burstSizes: [100, 1000], burstFunctions: 100, stepMs: 5000 };

function whole(name: string, text: string | undefined, min: number, usage: string): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be a whole number >= ${min}, got "${text}"\n${usage}`);
  return value;
}

/**
 * `--runs N` alone shrinks the density group to N functions (a quick proof that it works); the named knobs win.
 */
export function parseScale(values: Record<string, string | boolean | string[] | undefined>, runs: number | null, usage: string): BenchScale {
  const text = (name: string): string | undefined => (typeof values[name] === 'string' ? (values[name] as string) : undefined);
  const burst = text('burst');
  const burstSizes = burst === undefined ? DEFAULTS.burstSizes : burst.split(',').map((part) => whole('burst', part.trim(), 1, usage) as number);
  return {
    densityN: whole('density-n', text('density-n'), 1, usage) ?? runs ?? DEFAULTS.densityN,
    idleMs: whole('idle-ms', text('idle-ms'), 100, usage) ?? DEFAULTS.idleMs,
    burstSizes,
    burstFunctions: whole('burst-functions', text('burst-functions'), 1, usage) ?? DEFAULTS.burstFunctions,
    stepMs: whole('step-ms', text('step-ms'), 100, usage) ?? DEFAULTS.stepMs,
  };
}
