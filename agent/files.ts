/**
 * What a warm sandbox needs to run the resident agent of a runtime: the files placed under /.kindling and the
 * command line. Read from this package's own compiled output (dist/agent) and agent/python_wrapper.py, once.
 */
import { readFileSync } from 'node:fs';

export const AGENT_MOUNT = '/.kindling-agent';
export const AGENT_SOCKET = 'agent.sock';
const CODE_DIR = '/.kindling';

export interface AgentFile {
  name: string;
  content: string | Buffer;
}

export interface AgentLaunch {
  command: string[];
  files: AgentFile[];
}

/** The runtimes with a resident agent: deno and bun run the node agent (their node compatibility) with a TypeScript
 *  handler. */
export type AgentFamily = 'node' | 'python' | 'deno' | 'bun';
export type JsAgentFamily = Exclude<AgentFamily, 'python'>;

/**
 * How each JavaScript runtime runs a module. Deno and Bun take `.ts` as it is: types are stripped, not checked (a type
 * check belongs in the user's own build). Deno gets every permission: the sandbox is the boundary, not Deno's prompts.
 */
export const JS_RUNNERS: Readonly<Record<JsAgentFamily, readonly string[]>> = {
  node: ['node'],
  deno: ['deno', 'run', '--allow-all', '--quiet'],
  bun: ['bun'],
};

/** The file a handler's code is written to: TypeScript for deno and bun, an ES module or CommonJS file for node. */
export function handlerFileName(family: JsAgentFamily, code: string): string {
  if (family !== 'node') return 'handler.ts';
  return isNodeEsModule(code) ? 'handler.mjs' : 'handler.cjs';
}

/** The node agent's compiled modules, copied side by side as they sit in dist/agent: node-wrapper.js imports
 *  ./protocol.js, which imports ./frame.js. A module added to that chain must be added here. */
export const NODE_AGENT_MODULES = ['node-wrapper.js', 'protocol.js', 'frame.js'] as const;

let cache: { node: AgentFile[]; pythonWrapper: Buffer } | null = null;

function load(): NonNullable<typeof cache> {
  cache ??= {
    node: NODE_AGENT_MODULES.map((name) => ({ name, content: readFileSync(new URL(`./${name}`, import.meta.url)) })),
    // From dist/agent/ back to the source tree's agent/ (the python file is not compiled).
    pythonWrapper: readFileSync(new URL('../../agent/python_wrapper.py', import.meta.url)),
  };
  return cache;
}

/**
 * An `import`/`export` statement at the start of a line, after blanks. The blanks exclude line breaks on purpose: with
 * `^\s*` (and the m flag) every line start of a run of empty lines scanned the whole rest of the run, quadratic in the
 * code's length (a minute for 300k newlines), and this runs on a tenant's code at validation, deploy and every cold
 * start. Starting at the last line start before the statement finds the same matches in one pass.
 */
const ES_MODULE = /^[^\S\n\r\u2028\u2029]*(?:import\s[^(]|import\s*\{|export\s)/m;

/** Whether `code` uses ES module syntax at the top level (a line starting with `import` or `export`). */
export function hasEsModuleSyntax(code: string): boolean {
  return ES_MODULE.test(code);
}

/** Whether node should load `code` as an ES module (the contract's default) rather than CommonJS. */
export function isNodeEsModule(code: string): boolean {
  return hasEsModuleSyntax(code) || !/\b(module\.exports|exports\.)/.test(code);
}

/** A generic agent: started ahead of demand with no code; it waits for one LOAD (see agent/protocol.ts). */
export function genericAgentLaunch(runtime: AgentFamily): AgentLaunch {
  const files = load();
  const socket = `${AGENT_MOUNT}/${AGENT_SOCKET}`;
  if (runtime !== 'python') {
    return {
      command: [...JS_RUNNERS[runtime], `${CODE_DIR}/node-wrapper.js`, socket, '-', '-'],
      files: [
        { name: 'package.json', content: '{"type":"module"}\n' },
        ...files.node,
      ],
    };
  }
  return { command: ['python3', '-u', `${CODE_DIR}/python_wrapper.py`, socket, '-', '-'], files: [{ name: 'python_wrapper.py', content: files.pythonWrapper }] };
}

/** The agent's command and files for a handler of `runtime` defined in `code`. */
export function agentLaunch(runtime: AgentFamily, code: string, handler: string): AgentLaunch {
  const files = load();
  const socket = `${AGENT_MOUNT}/${AGENT_SOCKET}`;
  if (runtime !== 'python') {
    // node: an ES module by default (the contract); a CommonJS module (module.exports / exports.x) works as well.
    const user = handlerFileName(runtime, code);
    return {
      command: [...JS_RUNNERS[runtime], `${CODE_DIR}/node-wrapper.js`, socket, `${CODE_DIR}/${user}`, handler],
      files: [
        { name: 'package.json', content: '{"type":"module"}\n' },
        ...files.node,
        { name: user, content: code },
      ],
    };
  }
  return {
    command: ['python3', '-u', `${CODE_DIR}/python_wrapper.py`, socket, `${CODE_DIR}/handler.py`, handler],
    files: [
      { name: 'python_wrapper.py', content: files.pythonWrapper },
      { name: 'handler.py', content: code },
    ],
  };
}

/**
 * The agent's command and files for a handler defined in a module that is already in the sandbox (a bundle's file,
 * e.g. /work/src/index.js): nothing of the user's is copied. Node decides ES module or CommonJS itself (the bundle's
 * package.json "type", the file's extension).
 */
export function agentLaunchModule(runtime: AgentFamily, modulePath: string, handler: string): AgentLaunch {
  const files = load();
  const socket = `${AGENT_MOUNT}/${AGENT_SOCKET}`;
  if (runtime !== 'python') {
    return {
      command: [...JS_RUNNERS[runtime], `${CODE_DIR}/node-wrapper.js`, socket, modulePath, handler],
      files: [{ name: 'package.json', content: '{"type":"module"}\n' }, ...files.node],
    };
  }
  return { command: ['python3', '-u', `${CODE_DIR}/python_wrapper.py`, socket, modulePath, handler], files: [{ name: 'python_wrapper.py', content: files.pythonWrapper }] };
}
