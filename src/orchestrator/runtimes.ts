import { hasEsModuleSyntax } from '../../agent/files.js';
import type { InputFile, RuntimeName } from '../core/types.js';

/** How a code snippet of each runtime becomes a command in its image. The code travels as a file, never as argv. */
export interface RuntimeDefinition {
  name: RuntimeName;
  image: string;
  /** Defaults that differ from the global ones (a compiler needs more memory and time). */
  defaults: { memoryMb?: number; timeoutMs?: number; pids?: number };
  prepare(code: string): { command: string[]; files: InputFile[] };
}

const CODE_DIR = '/.kindling';

/** Node runs CommonJS unless the snippet uses ES module syntax at the top level (the agent's test, linear in time). */
export const looksLikeEsModule = hasEsModuleSyntax;

export const RUNTIMES: Record<RuntimeName, RuntimeDefinition> = {
  bash: {
    name: 'bash',
    image: 'kindling/base',
    defaults: {},
    prepare: (code) => ({ command: ['bash', `${CODE_DIR}/main.sh`], files: [{ name: 'main.sh', content: code }] }),
  },
  python: {
    name: 'python',
    image: 'kindling/python',
    defaults: {},
    prepare: (code) => ({ command: ['python3', '-u', `${CODE_DIR}/main.py`], files: [{ name: 'main.py', content: code }] }),
  },
  node: {
    name: 'node',
    image: 'kindling/node',
    defaults: {},
    prepare: (code) => {
      const name = looksLikeEsModule(code) ? 'main.mjs' : 'main.cjs';
      return { command: ['node', `${CODE_DIR}/${name}`], files: [{ name, content: code }] };
    },
  },
  rust: {
    name: 'rust',
    image: 'kindling/rust',
    // rustc alone needs a few hundred MiB; 256 MiB would OOM-kill the compiler, not the user's program.
    defaults: { memoryMb: 1024, timeoutMs: 60_000 },
    prepare: (code) => ({
      command: ['sh', '-c', `rustc -O -C strip=symbols -o /tmp/main ${CODE_DIR}/main.rs && exec /tmp/main`],
      files: [{ name: 'main.rs', content: code }],
    }),
  },
};
