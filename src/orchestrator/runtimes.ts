import { JS_RUNNERS, hasEsModuleSyntax } from '../../agent/files.js';
import type { InputFile, RuntimeFamily, RuntimeName } from '../core/types.js';
import type { AgentFamily } from '../../agent/files.js';

/** How a code snippet of each runtime becomes a command in its image. The code travels as a file, never as argv. */
export interface RuntimeDefinition {
  name: RuntimeName;
  family: RuntimeFamily;
  image: string;
  /** The image carries its own pip wheel (Debian's python3-pip-whl), which dependency builds run instead of the host's. */
  pipInImage?: boolean;
  /** Defaults that differ from the global ones (a compiler needs more memory and time). */
  defaults: { memoryMb?: number; timeoutMs?: number; pids?: number };
  prepare(code: string): { command: string[]; files: InputFile[] };
}

const CODE_DIR = '/.kindling';

/** Node runs CommonJS unless the snippet uses ES module syntax at the top level (the agent's test, linear in time). */
export const looksLikeEsModule = hasEsModuleSyntax;

function python(name: RuntimeName, image: string, pipInImage = false): RuntimeDefinition {
  return {
    name,
    family: 'python',
    image,
    ...(pipInImage ? { pipInImage } : {}),
    defaults: {},
    prepare: (code) => ({ command: ['python3', '-u', `${CODE_DIR}/main.py`], files: [{ name: 'main.py', content: code }] }),
  };
}

function node(name: RuntimeName, image: string): RuntimeDefinition {
  return {
    name,
    family: 'node',
    image,
    defaults: {},
    prepare: (code) => {
      const file = looksLikeEsModule(code) ? 'main.mjs' : 'main.cjs';
      return { command: ['node', `${CODE_DIR}/${file}`], files: [{ name: file, content: code }] };
    },
  };
}

/** Deno and Bun run a `.ts` file as it is, types stripped, not checked (see JS_RUNNERS). */
function typescript(name: 'deno' | 'bun'): RuntimeDefinition {
  return {
    name,
    family: name,
    image: `kindling/${name}`,
    defaults: {},
    prepare: (code) => ({ command: [...JS_RUNNERS[name], `${CODE_DIR}/main.ts`], files: [{ name: 'main.ts', content: code }] }),
  };
}

export const RUNTIMES: Record<RuntimeName, RuntimeDefinition> = {
  bash: {
    name: 'bash',
    family: 'bash',
    image: 'kindling/base',
    defaults: {},
    prepare: (code) => ({ command: ['bash', `${CODE_DIR}/main.sh`], files: [{ name: 'main.sh', content: code }] }),
  },
  // `python` and `node` name the newest (see RUNTIME_ALIASES); python3.11 and node18 stay selectable.
  python: python('python', 'kindling/python3.13', true),
  'python3.11': python('python3.11', 'kindling/python'),
  // trixie's pip: bookworm's pip 23 (the host's wheel) fails on Python 3.12+ (pkgutil.ImpImporter is gone).
  'python3.13': python('python3.13', 'kindling/python3.13', true),
  node: node('node', 'kindling/node20'),
  node18: node('node18', 'kindling/node'),
  node20: node('node20', 'kindling/node20'),
  deno: typescript('deno'),
  bun: typescript('bun'),
  go: {
    name: 'go',
    family: 'go',
    image: 'kindling/go',
    defaults: { memoryMb: 1024, timeoutMs: 60_000 },
    // Built, then exec'd: `go run` reports a program's non-zero exit as its own exit code 1.
    prepare: (code) => ({ command: ['sh', '-c', `go build -o /tmp/main ${CODE_DIR}/main.go && exec /tmp/main`], files: [{ name: 'main.go', content: code }] }),
  },
  java: {
    name: 'java',
    family: 'java',
    image: 'kindling/java',
    // The JVM and, in source-file mode, javac run in one process: 256 MiB is too tight for both.
    defaults: { memoryMb: 1024, timeoutMs: 60_000 },
    // Source-file mode (JEP 330): the first class of Main.java is compiled in memory and its main() run; nothing is
    // written, and the program's exit code is the result's.
    prepare: (code) => ({ command: ['java', `${CODE_DIR}/Main.java`], files: [{ name: 'Main.java', content: code }] }),
  },
  rust: {
    name: 'rust',
    family: 'rust',
    image: 'kindling/rust',
    // rustc alone needs a few hundred MiB; 256 MiB would OOM-kill the compiler, not the user's program.
    defaults: { memoryMb: 1024, timeoutMs: 60_000 },
    prepare: (code) => ({
      command: ['sh', '-c', `rustc -O -C strip=symbols -o /tmp/main ${CODE_DIR}/main.rs && exec /tmp/main`],
      files: [{ name: 'main.rs', content: code }],
    }),
  },
};

/**
 * Runtime names that mean "the newest of the family" and the runtime they mean today. What is stored (a function
 * version, a sandbox) names the concrete runtime, so a later change of the newest never changes what a deployed
 * version runs; versions stored before `node` and `python` meant Node 20 and Python 3.13 were migrated to node18 and
 * python3.11 (store/sqlite.ts, store/sandboxes-sqlite.ts).
 */
export const RUNTIME_ALIASES: Readonly<Partial<Record<RuntimeName, RuntimeName>>> = { node: 'node20', python: 'python3.13' };

/** The concrete runtime a name means now (`node` -> `node20`); other names, and no name, unchanged. */
export function concreteRuntime<T extends string | undefined | null>(runtime: T): T {
  if (typeof runtime !== 'string' || !Object.hasOwn(RUNTIME_ALIASES, runtime)) return runtime;
  return RUNTIME_ALIASES[runtime as RuntimeName] as T;
}

/** The handler agents' languages: a handler function runs on a runtime of one of these families (deno and bun run
 *  the node agent, with a TypeScript handler; go's and java's agents are compiled with the function's code at deploy). */
export type HandlerFamily = AgentFamily | 'go' | 'java';
const HANDLER_FAMILIES: readonly RuntimeFamily[] = ['node', 'python', 'deno', 'bun', 'go', 'java'];
/** Handler families whose agent is compiled with the function's code at deploy (no generic agent; bind executors only). */
export const COMPILED_HANDLER_FAMILIES: readonly HandlerFamily[] = ['go', 'java'];
/** A java handler: `Class.method` (the code defines the public class `Class`, in the default package). */
export const JAVA_HANDLER = /^([A-Za-z_$][A-Za-z0-9_$]{0,127})\.([A-Za-z_$][A-Za-z0-9_$]{0,127})$/;
/** A java bundle's handler function: `[package.]Class.method` (a class of the bundle, in any package). */
export const JAVA_QUALIFIED_HANDLER = /^((?:[A-Za-z_$][A-Za-z0-9_$]{0,127}\.){0,31}[A-Za-z_$][A-Za-z0-9_$]{0,127})\.([A-Za-z_$][A-Za-z0-9_$]{0,127})$/;

/** The family of a handler runtime (node20 -> node), or null for a runtime without a handler agent (or no runtime). */
export function handlerFamily(runtime: string | undefined): HandlerFamily | null {
  const family = runtime === undefined ? undefined : runtimeDefinition(runtime)?.family;
  return family !== undefined && HANDLER_FAMILIES.includes(family) ? (family as HandlerFamily) : null;
}

/** The image of a runtime (`kindling/node20` for node20); throws for a name that is not a runtime. */
export function runtimeImage(runtime: string): string {
  const definition = runtimeDefinition(runtime);
  if (definition === undefined) throw new Error(`unknown runtime ${runtime}`);
  return definition.image;
}

/** The runtime of this name, or undefined (an own key only: "constructor" or "__proto__" is no runtime). */
export function runtimeDefinition(name: string): RuntimeDefinition | undefined {
  return Object.hasOwn(RUNTIMES, name) ? RUNTIMES[name as RuntimeName] : undefined;
}
