/**
 * Builds at deploy time. Compiled runtimes (go, rust): the function's source (its code, or a Go bundle) is compiled
 * once in a build sandbox without network (unless the operator names a Go module proxy), and the program is kept as a
 * layer keyed by (source, runtime, image), seen read-only at COMPILED_MOUNT; invocations exec it instead of compiling.
 *
 * Dependency builds of node bundles: a bundle with package.json + package-lock.json gets `npm ci --omit=dev
 * --ignore-scripts` run as an ordinary execution (the same executors, limits and accounting as any other) in a build
 * sandbox that sees the bundle read-only at /work and the operator's npm read-only at NPM_MOUNT. The installed tree
 * leaves the sandbox as a tar on stdout and goes through the same guard and unprivileged unpack as an uploaded bundle,
 * into the layer store under the hash of (lockfile, runtime image, npm version): one build per lockfile, shared
 * read-only at /work/node_modules by every version that has it.
 *
 * Install scripts are off: a package's postinstall would run with the build's network and write into a layer that
 * every function with the same lockfile then runs; packages that need a compiled addon are not supported.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KindlingError } from '../core/errors.js';
import type { FunctionLayer } from '../store/store.js';
import type { ExecutorName } from '../core/types.js';
import type { BundleStore } from './bundles.js';
import type { ExecutionService, TenantScope } from './execution-service.js';
import { buildFailureAdvice } from './build-advice.js';
import { ConcurrencyLimiter } from './concurrency-limiter.js';
import { BUILD_FUNCTION_LABEL } from '../metrics/metrics.js';
import { handlerFamily, JAVA_HANDLER, runtimeDefinition, runtimeImage, type RuntimeDefinition } from './runtimes.js';

/** Where the operator's npm is bound inside the build sandbox (a new top-level directory: nothing of the image hides). */
export const NPM_MOUNT = '/kindling-npm';
/** Where a layer is seen by the function: node resolves packages from the bundle's directory upwards. */
export const LAYER_MOUNT = '/work/node_modules';
/** Where the operator's extra CA bundle is bound inside the build sandbox. */
export const CA_MOUNT = '/kindling-ca.pem';
/** Where a python layer is seen (on PYTHONPATH after /work): a mount point the bundle store makes in the bundle. */
export const PYTHON_LAYER_MOUNT = '/work/.deps';
/** Where the operator's pip wheel is bound inside a python build sandbox (python runs pip from the wheel file). */
export const PIP_MOUNT = '/kindling-pip.whl';
export const DEFAULT_PIP_INDEX_URL = 'https://pypi.org/simple';
/** Where a compiled function's program is seen (a new top-level directory: nothing of the image hides): COMPILED_PROGRAM. */
export const COMPILED_MOUNT = '/kindling-bin';
export const COMPILED_PROGRAM = `${COMPILED_MOUNT}/main`;
/** In a java bundle's compiled layer: the JVM's options (its class path), given to the java launcher as @argfile. */
export const JAVA_ARGS_FILE = 'kindling-java.args';
/** GOPROXY of Go bundle builds: off, so a bundle's modules are its own or vendored (go mod vendor); --build-go-proxy names one. */
export const DEFAULT_GO_PROXY = 'off';
/** pip wheels an image brings (Debian's python3-pip-whl, one wheel): a pip build of such a runtime runs it rather than the operator's. */
const IMAGE_PIP_WHEELS = '/usr/share/python-wheels/pip-*.whl';
/** Where Debian's python3-pip-whl puts pip's wheel. */
const DEFAULT_PIP_WHEEL_DIR = '/usr/share/python-wheels';

export const DEFAULT_BUILD_TIMEOUT_MS = 300_000;
export const DEFAULT_BUILD_MEMORY_MB = 1024;
export const DEFAULT_BUILD_CPUS = 1;
export const DEFAULT_BUILD_DISK_MB = 1024;
export const DEFAULT_BUILD_REGISTRY = 'https://registry.npmjs.org/';
/** Half the cores: builds (npm ci, pip install) are CPU-heavy, and invocations must keep the other half. */
export const DEFAULT_MAX_CONCURRENT_BUILDS = Math.max(1, Math.floor(availableParallelism() / 2));
/** Builds waiting for a slot: enough for bursts of deploys, small enough that a flood gets 429s, not a pile. */
export const MAX_QUEUED_BUILDS = 64;
/** Bytes of build log kept for the error (the end of it: npm prints its error last). */
const LOG_KEPT_BYTES = 64 * 1024;

export interface BuilderOptions {
  executionService: Pick<ExecutionService, 'executeRaw'>;
  /**
   * The executor builds run on (one with network egress and binds: sandbox or docker); default: the server's. A
   * function on gvisor or microvm still gets its layers built, by this one.
   */
  executor?: ExecutorName;
  /** Where layers are kept (a BundleStore over <data-dir>/layers, keyed by lockfile hash). */
  layers: BundleStore;
  /** Host directory of the npm package run by builds (its bin/npm-cli.js), e.g. /usr/lib/node_modules/npm. */
  npmDir: string;
  registry?: string;
  timeoutMs?: number;
  memoryMb?: number;
  cpus?: number;
  diskMb?: number;
  /**
   * A PEM bundle of CAs the build trusts besides node's own (NODE_EXTRA_CA_CERTS), bound read-only at CA_MOUNT: a
   * registry mirror or a TLS-inspecting proxy with a private CA. Absent: node's built-in roots only.
   */
  caFile?: string;
  /** The image npm builds run in (the node runtime's). */
  image?: string;
  /** The image pip builds run in (the python runtime's). */
  pythonImage?: string;
  /** pip's index (PEP 503 simple), --pip-index-url. */
  pipIndexUrl?: string;
  /** Host path of the pip wheel builds run (--build-pip-wheel); default: the newest in /usr/share/python-wheels. */
  pipWheel?: string;
  /** Builds running at once on this server (--max-concurrent-builds); more wait in a bounded FIFO. Default DEFAULT_MAX_CONCURRENT_BUILDS. */
  maxConcurrent?: number;
  /** Builds that may wait for a slot; beyond, a deploy gets 429 at once. Default MAX_QUEUED_BUILDS. */
  maxQueued?: number;
  /** GOPROXY of Go bundle builds (--build-go-proxy); not `off`: the build has network "egress". Default DEFAULT_GO_PROXY. */
  goProxy?: string;
}

export interface BuildResult {
  layer: FunctionLayer;
  log: string;
}

/** The two ecosystems a build installs, by runtime: what file names the dependencies, and where the layer is seen. */
export const BUILD_KINDS = {
  // deno and bun load a bundle's node_modules too (Deno through its package.json, Bun as node does).
  npm: { families: ['node', 'deno', 'bun'], image: 'kindling/node', files: ['package.json', 'package-lock.json'], keyFile: 'package-lock.json', mount: LAYER_MOUNT },
  pip: { families: ['python'], image: 'kindling/python', files: ['requirements.txt'], keyFile: 'requirements.txt', mount: PYTHON_LAYER_MOUNT },
  // Not found by needsBuild (no file says it): a function of these runtimes is compiled (see compiledFor).
  compile: { families: ['go', 'rust'], image: 'kindling/go', files: [], keyFile: 'source', mount: COMPILED_MOUNT },
} as const;
export type BuildKind = keyof typeof BUILD_KINDS;
/** The runtime whose image installs the npm dependencies of a deno or bun bundle. */
const NPM_RUNTIME_OF_TYPESCRIPT = 'node20';

/** The runtimes whose functions are compiled at deploy time. */
export const COMPILED_RUNTIME_FAMILIES: readonly string[] = BUILD_KINDS.compile.families;

/** What one build runs and what its layer is keyed by. */
interface BuildPlan {
  kind: BuildKind;
  key: string;
  /** What the layer is keyed by, for the log ("package-lock.json", "source"). */
  keyedBy: string;
  image: string;
  script: string;
  env: Record<string, string>;
  binds: { source: string; target: string }[];
  network: 'egress' | 'none';
  /** Bytes on the build's stdin (a code function's source). */
  stdin?: Buffer;
  /** What the failure says ran: "npm ci", "pip install", "go build", "rustc". */
  tool: string;
  /** What the failure says failed: "installing the bundle's dependencies". */
  doing: string;
  /** The registry or index the advice names when it was not reached. */
  registry: string;
}

/** The layer's mount point for a version's layer (layers recorded before pip existed have no kind: npm). */
export const layerMount = (layer: { kind?: BuildKind }): string => BUILD_KINDS[layer.kind ?? 'npm'].mount;

export class DependencyBuilder {
  private npmVersion: string | null = null;
  private pipWheel: { path: string; version: string } | null = null;
  /** Builds in flight by layer hash: two deploys of the same lockfile build once. */
  private readonly running = new Map<string, Promise<BuildResult>>();

  /** The server's build slots: a build waits here (FIFO, bounded) before it takes an execution slot. */
  private readonly slots: ConcurrencyLimiter;

  constructor(private readonly options: BuilderOptions) {
    const timeoutMs = options.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS;
    this.slots = new ConcurrencyLimiter({
      maxConcurrent: Math.max(1, options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_BUILDS),
      maxQueued: Math.max(0, options.maxQueued ?? MAX_QUEUED_BUILDS),
      // A queued build waits at most for a full queue ahead of it, each build as long as its budget allows.
      queueTimeoutMs: timeoutMs * Math.max(1, Math.ceil((options.maxQueued ?? MAX_QUEUED_BUILDS) / Math.max(1, options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_BUILDS))),
      slotName: 'build slot',
      limitName: '--max-concurrent-builds',
    });
  }

  /** Builds running and waiting now, and the bounds. */
  get stats(): { running: number; queued: number; maxConcurrent: number; maxQueued: number } {
    return this.slots.stats;
  }

  /** 429 TOO_MANY_REQUESTS if a build now would find every build slot taken and the queue full: checked before a deploy commits. */
  checkRoom(): void {
    this.slots.checkRoom();
  }

  /**
   * What a bundle of this runtime needs built: npm for a node, deno or bun bundle with package.json and
   * package-lock.json at its root, pip for a python bundle with requirements.txt; null for anything else.
   */
  async needsBuild(bundleDir: string, runtime: string | undefined): Promise<'npm' | 'pip' | null> {
    for (const kind of ['npm', 'pip'] as const) {
      const spec = BUILD_KINDS[kind];
      const family = handlerFamily(runtime);
      if (family === null || !(spec.families as readonly string[]).includes(family)) continue;
      const found = await Promise.all(spec.files.map((file) => readFile(join(bundleDir, file)).then(() => true, () => false)));
      if (found.every(Boolean)) return kind;
    }
    return null;
  }

  /**
   * The layer of the bundle at `bundleDir`: reused when its lockfile (requirements.txt) was built before, else built
   * now. `onLog` gets the build's log as it is written (npm's / pip's stderr).
   */
  async layerFor(bundleDir: string, kind: 'npm' | 'pip', tenant: TenantScope, onLog?: (text: string) => void, runtime?: string): Promise<BuildResult> {
    const lock = await readFile(join(bundleDir, BUILD_KINDS[kind].keyFile));
    const image = this.imageOf(kind, runtime);
    const imagePip = kind === 'pip' && runtime !== undefined && runtimeDefinition(runtime)?.pipInImage === true;
    // npm: the same key as before pip builds existed (layers on disk stay valid); pip: its own key space, with the pip
    // that runs (the operator's wheel by version, or the image's own: the image names it).
    const key =
      kind === 'npm'
        ? createHash('sha256').update(lock).update('\0').update(image).update('\0').update(await this.npm()).digest('hex')
        : createHash('sha256').update('pip\0').update(lock).update('\0').update(image).update('\0').update(imagePip ? 'image-pip' : (await this.pip()).version).update('\0').update(this.options.pipIndexUrl ?? DEFAULT_PIP_INDEX_URL).digest('hex');
    const registry = kind === 'npm' ? (this.options.registry ?? DEFAULT_BUILD_REGISTRY) : (this.options.pipIndexUrl ?? DEFAULT_PIP_INDEX_URL);
    return this.layer(
      {
        kind,
        key,
        keyedBy: BUILD_KINDS[kind].keyFile,
        image,
        // Resolved lazily: a reused layer needs neither the script nor the pip wheel.
        script: '',
        env: kind === 'npm' ? this.npmEnv() : this.pipEnv(),
        binds: [{ source: bundleDir, target: '/work' }, ...(this.options.caFile === undefined ? [] : [{ source: this.options.caFile, target: CA_MOUNT }])],
        network: 'egress',
        tool: kind === 'npm' ? 'npm ci' : 'pip install',
        doing: "installing the bundle's dependencies",
        registry,
      },
      tenant,
      onLog,
      async (plan) => ({
        ...plan,
        script: await this.script(kind, imagePip),
        binds: [...plan.binds, ...(kind === 'npm' ? [{ source: this.options.npmDir, target: NPM_MOUNT }] : imagePip ? [] : [{ source: (await this.pip()).path, target: PIP_MOUNT }])],
      }),
    );
  }

  /**
   * The compiled program of a go or rust function: reused when the tenant's same source was compiled before for the
   * runtime's image, else compiled now in a build sandbox. `source` is a code function's code, or a Go bundle (its directory and
   * content hash): `go build` of its module (or of its *.go files without go.mod), with GOPROXY --build-go-proxy.
   */
  async compiledFor(source: { code: string; handler?: string } | { bundleDir: string; bundleSha256: string; handler?: string }, runtime: string, tenant: TenantScope, onLog?: (text: string) => void): Promise<BuildResult> {
    const definition = runtimeDefinition(runtime);
    const family = definition?.family;
    if (definition === undefined || (family !== 'go' && family !== 'rust' && family !== 'java')) throw new Error(`runtime ${runtime} is not compiled at deploy time`);
    const bundle = 'bundleDir' in source;
    if (bundle && family !== 'go' && family !== 'rust' && !(family === 'java' && source.handler !== undefined)) throw new Error('only go and rust bundles and java handler bundles are compiled at deploy time');
    // A go handler: the code (or a bundle's package main) is compiled with the resident agent (agent/go/agent.go) and
    // a file naming the handler. A java handler: the code (its class) is compiled with agent/java/KindlingAgent.java.
    const handler = source.handler ?? null;
    if (family === 'java') {
      if (handler === null) throw new Error('only java handlers are compiled at deploy time');
      return 'bundleDir' in source ? this.compiledJavaBundle(source.bundleDir, source.bundleSha256, definition, tenant, onLog) : this.compiledJavaHandler(source.code, handler, definition, tenant, onLog);
    }
    if (handler !== null && (family !== 'go' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(handler))) throw new Error(`no ${family} handler agent for ${handler}`);
    const agent = handler === null ? null : goAgentSource();
    const goProxy = this.options.goProxy ?? DEFAULT_GO_PROXY;
    // Per tenant: a `reused: true` across tenants would tell one tenant that another deployed exactly this code.
    const key = createHash('sha256')
      .update('compile\0')
      .update(tenant.name)
      .update('\0')
      .update(definition.name)
      .update('\0')
      .update(definition.image)
      .update('\0')
      .update(bundle ? `bundle\0${source.bundleSha256}\0${family === 'go' ? goProxy : 'offline'}` : `code\0${source.code}`)
      .update(handler === null ? '' : `\0handler\0${handler}\0${createHash('sha256').update(agent!).digest('hex')}`)
      .digest('hex');
    const out = '/tmp/out';
    // No -trimpath: the image's standard library was compiled without it, and go would compile it all again (12 s).
    const compile =
      family === 'rust' && bundle
        ? // A cargo package, built offline (dependencies are vendored: `cargo vendor` and its .cargo/config.toml, or
          // path dependencies) from a copy (cargo may write Cargo.lock); its one binary is the program.
          [
            'cp -R /work/. /tmp/src/',
            'cd /tmp/src',
            '[ -f Cargo.toml ] || { echo "a rust bundle is a cargo package: Cargo.toml at its root" >&2; exit 1; }',
            'cargo build --release --offline --target-dir /tmp/target 1>&2',
            'set -- $(find /tmp/target/release -maxdepth 1 -type f -perm -u+x)',
            'if [ "$#" -ne 1 ]; then echo "the package builds $# binaries ($*); a rust bundle runs one: keep one [[bin]], or deploy with a command" >&2; exit 1; fi',
            `cp "$1" ${out}/main`,
          ].join('\n')
        : family === 'rust'
        ? // The flags of a one-off rust run (runtimes.ts): the same program either way.
          `rustc -O -C strip=symbols -o ${out}/main /tmp/src/main.rs 1>&2`
        : bundle && handler !== null
          ? // A handler bundle: its package main, copied out of the read-only bundle, with the agent and the file naming
            // the handler added beside its files; built as a module when it is one.
            [
              'cp -R /work/. /tmp/src/',
              `printf %s ${agent!.toString('base64')} | base64 -d > /tmp/src/kindling_agent.go`,
              `printf 'package main\\n\\nvar kindlingHandler any = ${handler}\\n' > /tmp/src/kindling_handler.go`,
              `cd /tmp/src && if [ -f go.mod ]; then go build -o ${out}/main . 1>&2; else go build -o ${out}/main ./*.go 1>&2; fi`,
            ].join('\n')
          : bundle
          ? // A module builds as a module (vendor/ is used when present); loose files build as one package.
            `cd /work && if [ -f go.mod ]; then go build -o ${out}/main . 1>&2; else go build -o ${out}/main ./*.go 1>&2; fi`
          : handler !== null
            ? // The agent travels in the script (base64), not as a bind: the sandbox's uid may not reach the server's
              // checkout (a bind source under a 0700 directory fails in bwrap).
              `cd /tmp/src && printf %s ${agent!.toString('base64')} | base64 -d > kindling_agent.go && printf 'package main\\n\\nvar kindlingHandler any = ${handler}\\n' > kindling_handler.go && go build -o ${out}/main handler.go kindling_agent.go kindling_handler.go 1>&2`
            : `cd /tmp/src && go build -o ${out}/main main.go 1>&2`;
    const sourceFile = family === 'rust' ? 'main.rs' : handler !== null ? 'handler.go' : 'main.go';
    const script = ['set -e', `mkdir -p /tmp/src ${out}`, ...(bundle ? [] : [`cat > /tmp/src/${sourceFile}`]), compile, `tar -b 1 -cf - -C ${out} .`].join('\n');
    const network = bundle && family === 'go' && goProxy !== 'off' ? 'egress' : 'none';
    return this.layer(
      {
        kind: 'compile',
        key,
        keyedBy: 'source',
        image: definition.image,
        script,
        env: { HOME: '/tmp/home', ...(family === 'go' ? { GOPROXY: goProxy, GOPATH: '/tmp/gopath', GOFLAGS: '-buildvcs=false' } : { CARGO_HOME: '/tmp/cargo-home' }) },
        binds: bundle ? [{ source: source.bundleDir, target: '/work' }, ...(network === 'egress' && this.options.caFile !== undefined ? [{ source: this.options.caFile, target: CA_MOUNT }] : [])] : [],
        network,
        ...(bundle ? {} : { stdin: Buffer.from(source.code) }),
        tool: family === 'go' ? 'go build' : bundle ? 'cargo build' : 'rustc',
        doing: `compiling the ${family === 'go' ? 'Go' : 'Rust'} ${bundle ? 'bundle' : 'code'}`,
        registry: family === 'go' ? goProxy : 'offline',
      },
      tenant,
      onLog,
    );
  }

  /**
   * A java handler's classes: its code (the public class the handler names, as CLASS.java) and the agent
   * (agent/java/KindlingAgent.java), compiled together by javac in the java image with no network; reused per tenant
   * for the same code, handler and agent.
   */
  private compiledJavaHandler(code: string, handler: string, definition: RuntimeDefinition, tenant: TenantScope, onLog?: (text: string) => void): Promise<BuildResult> {
    const className = JAVA_HANDLER.exec(handler)?.[1];
    if (className === undefined) throw new Error(`a java handler is Class.method, got ${handler}`);
    const agent = javaAgentSource();
    const key = createHash('sha256')
      .update(`compile\0${tenant.name}\0${definition.name}\0${definition.image}\0code\0${code}\0handler\0${className}\0`)
      .update(createHash('sha256').update(agent).digest('hex'))
      .digest('hex');
    const out = '/tmp/out';
    const script = [
      'set -e',
      `mkdir -p /tmp/src ${out}`,
      `cat > /tmp/src/${className}.java`,
      // The agent travels in the script (base64), as the go agent does: a bind of the checkout may be unreachable.
      `printf %s ${agent.toString('base64')} | base64 -d > /tmp/src/KindlingAgent.java`,
      `javac -J-XX:+UseSerialGC -encoding UTF-8 -d ${out} /tmp/src/${className}.java /tmp/src/KindlingAgent.java 1>&2`,
      `tar -b 1 -cf - -C ${out} .`,
    ].join('\n');
    return this.layer(
      { kind: 'compile', key, keyedBy: 'source', image: definition.image, script, env: { HOME: '/tmp/home' }, binds: [], network: 'none', stdin: Buffer.from(code), tool: 'javac', doing: 'compiling the Java handler', registry: 'none' },
      tenant,
      onLog,
    );
  }

  /**
   * A java handler bundle's classes: every .java file of the bundle and the agent, compiled together by javac with the
   * bundle's jars (any *.jar in it: vendored dependencies, since builds reach no Maven repository) on the class path;
   * no network. The layer also holds JAVA_ARGS_FILE, the JVM's class path at run time (the classes, the bundle's root
   * for its resources, its jars), read by the java launcher as an @argfile. The handler is not part of the key: the
   * same bundle compiles once for all its handlers.
   */
  private compiledJavaBundle(bundleDir: string, bundleSha256: string, definition: RuntimeDefinition, tenant: TenantScope, onLog?: (text: string) => void): Promise<BuildResult> {
    const agent = javaAgentSource();
    const key = createHash('sha256')
      .update(`compile\0${tenant.name}\0${definition.name}\0${definition.image}\0bundle\0${bundleSha256}\0java\0`)
      .update(createHash('sha256').update(agent).digest('hex'))
      .digest('hex');
    const out = '/tmp/out';
    const script = [
      'set -e',
      `mkdir -p /tmp/agent ${out}`,
      `printf %s ${agent.toString('base64')} | base64 -d > /tmp/agent/KindlingAgent.java`,
      'cd /work',
      // Arguments in argfiles are quoted, so that a path with a space stays one argument.
      `find . -type f -name '*.java' | sort | sed 's|^\\./|/work/|; s|.*|"&"|' > /tmp/sources.txt`,
      `if [ ! -s /tmp/sources.txt ]; then echo 'the bundle has no .java file to compile' >&2; exit 1; fi`,
      `jars=$(find . -type f -name '*.jar' | sort | sed 's|^\\./|/work/|' | paste -sd: -)`,
      'set --',
      'if [ -n "$jars" ]; then set -- -cp "$jars"; fi',
      `javac -J-XX:+UseSerialGC -encoding UTF-8 -d ${out} "$@" @/tmp/sources.txt /tmp/agent/KindlingAgent.java 1>&2`,
      `printf -- '-cp\\n"%s"\\n' "${COMPILED_MOUNT}:/work\${jars:+:$jars}" > ${out}/${JAVA_ARGS_FILE}`,
      `tar -b 1 -cf - -C ${out} .`,
    ].join('\n');
    return this.layer(
      { kind: 'compile', key, keyedBy: 'source', image: definition.image, script, env: { HOME: '/tmp/home' }, binds: [{ source: bundleDir, target: '/work' }], network: 'none', tool: 'javac', doing: 'compiling the Java bundle', registry: 'none' },
      tenant,
      onLog,
    );
  }

  /** A plan's layer: the one being built for the same key, or the one built before, or a build now. */
  private async layer(plan: BuildPlan, tenant: TenantScope, onLog?: (text: string) => void, complete?: (plan: BuildPlan) => Promise<BuildPlan>): Promise<BuildResult> {
    const { key, kind } = plan;
    const inFlight = this.running.get(key);
    if (inFlight !== undefined) {
      onLog?.(`waiting for the build of the same ${plan.keyedBy} that another deploy started\n`);
      return inFlight.then((r) => ({ ...r, layer: { ...r.layer, reused: true, buildMs: 0 } }));
    }
    if (await this.options.layers.has(key)) {
      const bytes = (await readFile(join(this.options.layers.pathOf(key), '..', `.${key}.bytes`), 'utf8').catch(() => '0')).trim();
      onLog?.(`layer sha256:${key} of this ${plan.keyedBy} was built before: nothing to ${kind === 'compile' ? 'compile' : 'install'}\n`);
      return { layer: { sha256: key, bytes: Number(bytes) || 0, reused: true, buildMs: 0, ...(kind === 'npm' ? {} : { kind }) }, log: '' };
    }
    const build = (complete === undefined ? Promise.resolve(plan) : complete(plan)).then((ready) => this.build(ready, tenant, onLog));
    this.running.set(key, build);
    try {
      return await build;
    } finally {
      this.running.delete(key);
    }
  }

  private npmEnv(): Record<string, string> {
    return {
      HOME: '/tmp/home',
      npm_config_cache: '/tmp/npm-cache',
      npm_config_registry: this.options.registry ?? DEFAULT_BUILD_REGISTRY,
      npm_config_update_notifier: 'false',
      NODE_OPTIONS: '--no-warnings',
      ...(this.options.caFile === undefined ? {} : { NODE_EXTRA_CA_CERTS: CA_MOUNT }),
    };
  }

  private pipEnv(): Record<string, string> {
    return {
      HOME: '/tmp/home',
      KINDLING_PIP_INDEX_URL: this.options.pipIndexUrl ?? DEFAULT_PIP_INDEX_URL,
      PYTHONDONTWRITEBYTECODE: '1',
      // An http:// index is the operator's own choice (an internal mirror): pip ignores one unless trusted.
      ...plainHttpHost(this.options.pipIndexUrl ?? DEFAULT_PIP_INDEX_URL),
      // pip's own trust store is its bundled certifi; an operator's CA replaces it (PIP_CERT).
      ...(this.options.caFile === undefined ? {} : { PIP_CERT: CA_MOUNT }),
    };
  }

  /** Unpins a layer `layerFor` built (its version was stored, or the deploy failed). */
  release(sha256: string, result: BuildResult): void {
    if (!result.layer.reused) this.options.layers.release(sha256);
  }

  /**
   * The image a build runs in: the function's runtime's (node20 builds in kindling/node20: the layer is built for the
   * interpreter that loads it), or for the family's default runtime the configured one.
   */
  private imageOf(kind: 'npm' | 'pip', runtime?: string): string {
    const configured = kind === 'npm' ? (this.options.image ?? BUILD_KINDS.npm.image) : (this.options.pythonImage ?? BUILD_KINDS.pip.image);
    if (runtime === undefined) return configured;
    // Deno and Bun bring no node to run npm: their node_modules (JavaScript) are installed by the current node's npm.
    const family = handlerFamily(runtime);
    const image = runtimeImage(family === 'deno' || family === 'bun' ? NPM_RUNTIME_OF_TYPESCRIPT : runtime);
    return image === BUILD_KINDS[kind].image ? configured : image;
  }

  /** The build's shell script: the install's own output goes to stderr (the build log); stdout carries only the tar. */
  private async script(kind: 'npm' | 'pip', imagePip: boolean): Promise<string> {
    if (kind === 'npm') {
      return [
        'set -e',
        'mkdir -p /tmp/build/node_modules && cp /work/package.json /work/package-lock.json /tmp/build/ && cd /tmp/build',
        `node ${NPM_MOUNT}/bin/npm-cli.js ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=http 1>&2`,
        // Records of one block: GNU tar on the host stops reading at the end-of-archive blocks, and padding after them
        // would then meet a closed pipe.
        'tar -b 1 -cf - -C /tmp/build/node_modules .',
      ].join('\n');
    }
    // Wheels only (--only-binary): an sdist would run its setup.py with the build's network, the pip analogue of an
    // npm install script. pip runs from a wheel file: the image's own where the runtime says it has one (python3.13's
    // carries trixie's: bookworm's pip 23 does not run on Python 3.12+), else the operator's (bookworm's python image
    // has no pip).
    return [
      'set -e',
      'mkdir -p /tmp/build/deps',
      imagePip ? `pip=$(ls ${IMAGE_PIP_WHEELS} | tail -n 1); [ -n "$pip" ] || { echo "the image has no pip wheel in /usr/share/python-wheels" >&2; exit 1; }` : `pip=${PIP_MOUNT}`,
      `python3 "$pip/pip" install --no-cache-dir --disable-pip-version-check --no-input --only-binary=:all: --target /tmp/build/deps --index-url "$KINDLING_PIP_INDEX_URL" -r /work/requirements.txt 1>&2`,
      'tar -b 1 -cf - -C /tmp/build/deps .',
    ].join('\n');
  }

  private async build(plan: BuildPlan, tenant: TenantScope, onLog?: (text: string) => void): Promise<BuildResult> {
    const started = Date.now();
    const { kind, key } = plan;
    // stdout (the tar) goes to a file first and is unpacked once the build succeeded: a failed build leaves nothing
    // half-unpacked, and the unpack reads a complete archive at its own pace. Its size is bounded by the build's disk.
    const { running, maxConcurrent } = this.slots.stats;
    if (running >= maxConcurrent) onLog?.(`waiting for a build slot (${running} builds running, --max-concurrent-builds ${maxConcurrent})\n`);
    const releaseSlot = await this.slots.acquire();
    const spool = await mkdtemp(join(tmpdir(), 'kindling-build-')).catch((error: unknown) => {
      releaseSlot();
      throw error;
    });
    const archive = join(spool, 'layer.tar');
    try {
      const sink = createWriteStream(archive);
      let raw;
      try {
        raw = await this.options.executionService.executeRaw(
          {
            image: plan.image,
            command: ['bash', '-c', plan.script],
            network: plan.network,
            timeoutMs: this.options.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS,
            memoryMb: this.options.memoryMb ?? DEFAULT_BUILD_MEMORY_MB,
            cpus: this.options.cpus ?? DEFAULT_BUILD_CPUS,
            diskMb: this.options.diskMb ?? DEFAULT_BUILD_DISK_MB,
            outputBytes: LOG_KEPT_BYTES,
            env: plan.env,
            ...(this.options.executor === undefined ? {} : { executor: this.options.executor }),
          },
          {
            ...(plan.binds.length === 0 ? {} : { roBinds: plan.binds }),
            io: { stdin: plan.stdin === undefined ? { kind: 'none' } : { kind: 'bytes', bytes: plan.stdin }, stdout: { kind: 'sink', sink, keepBytes: 0 } },
            tenant,
            // Its own label in metrics and usage records: a failed build is not a failed one-off execution.
            functionName: BUILD_FUNCTION_LABEL,
            ...(onLog === undefined ? {} : { onOutput: (stream: string, text: string) => (stream === 'stderr' ? onLog(text) : undefined) }),
          },
        );
      } finally {
        await new Promise<void>((resolve) => sink.end(resolve));
      }
      const log = raw.stderr.toString('utf8');
      if (raw.result.exitCode !== 0) {
        const why = raw.result.timedOut ? `the build ran out of time (--build-timeout-ms ${this.options.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS})` : raw.result.oomKilled ? `the build ran out of memory (--build-memory-mb ${this.options.memoryMb ?? DEFAULT_BUILD_MEMORY_MB})` : `${plan.tool} exited with ${raw.result.exitCode}`;
        const fix = buildFailureAdvice(kind, log, plan.registry);
        const tail = lastLines(log, 8);
        throw new KindlingError('BUILD_FAILED', `${plan.doing} failed: ${why}; ${fix}. ${plan.tool} said:\n${tail}`, { details: { log: log.slice(-LOG_KEPT_BYTES), exitCode: raw.result.exitCode, timedOut: raw.result.timedOut } });
      }
      const info = await this.options.layers.ingest(createReadStream(archive), { key });
      await writeFile(join(this.options.layers.pathOf(key), '..', `.${key}.bytes`), String(info.bytes)).catch(() => undefined);
      return { layer: { sha256: key, bytes: info.bytes, reused: false, buildMs: Date.now() - started, ...(kind === 'npm' ? {} : { kind }) }, log };
    } finally {
      releaseSlot();
      await rm(spool, { recursive: true, force: true });
    }
  }

  private async npm(): Promise<string> {
    if (this.npmVersion === null) {
      const pkg = JSON.parse(await readFile(join(this.options.npmDir, 'package.json'), 'utf8')) as { version?: string };
      this.npmVersion = pkg.version ?? 'unknown';
    }
    return this.npmVersion;
  }

  /** The pip wheel builds run (--build-pip-wheel, else the newest of the host's /usr/share/python-wheels). */
  private async pip(): Promise<{ path: string; version: string }> {
    if (this.pipWheel === null) {
      let path = this.options.pipWheel;
      if (path === undefined) {
        const wheels = (await readdir(DEFAULT_PIP_WHEEL_DIR).catch(() => [] as string[])).filter((name) => /^pip-[\d.]+-py3-none-any\.whl$/.test(name));
        wheels.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
        const newest = wheels.at(-1);
        if (newest === undefined) {
          throw new KindlingError('BUILD_FAILED', `python dependency builds need pip's wheel: none in ${DEFAULT_PIP_WHEEL_DIR} (Debian's python3-pip-whl); the operator installs it or sets --build-pip-wheel`);
        }
        path = join(DEFAULT_PIP_WHEEL_DIR, newest);
      }
      const version = /pip-([\d.]+)-/.exec(basename(path))?.[1] ?? 'unknown';
      this.pipWheel = { path, version };
    }
    return this.pipWheel;
  }
}

/** The go handler agent's source, in the source tree (not compiled by tsc), written into go handler builds. */
const GO_AGENT_PATH = fileURLToPath(new URL('../../../agent/go/agent.go', import.meta.url));
let goAgent: Buffer | null = null;
function goAgentSource(): Buffer {
  goAgent ??= readFileSync(GO_AGENT_PATH);
  return goAgent;
}

/** The java handler agent's source (agent/java/KindlingAgent.java), written into java handler builds. */
const JAVA_AGENT_PATH = fileURLToPath(new URL('../../../agent/java/KindlingAgent.java', import.meta.url));
let javaAgent: Buffer | null = null;
function javaAgentSource(): Buffer {
  javaAgent ??= readFileSync(JAVA_AGENT_PATH);
  return javaAgent;
}

/** PIP_TRUSTED_HOST for an index URL on plain http (pip refuses such an index otherwise); nothing for https. */
function plainHttpHost(indexUrl: string): { PIP_TRUSTED_HOST?: string } {
  try {
    const url = new URL(indexUrl);
    return url.protocol === 'http:' ? { PIP_TRUSTED_HOST: url.hostname } : {};
  } catch {
    return {};
  }
}

function lastLines(text: string, count: number): string {
  return text.trimEnd().split('\n').slice(-count).join('\n').slice(-2000);
}
