/**
 * Function bundles on the sandbox executor: the first invocation (cold start) of a node handler whose bundle carries
 * ~50 MB of node_modules next to that of a dependency-free bundle (same path: the bundle is bound read-only at /work,
 * nothing is copied per sandbox; target < 2x), alternated, each on a function deployed just before; the deploy
 * (upload, check, unpack) of the 50 MB bundle; and the disk the bundle store uses for 20 functions deployed from the
 * same bundle (one unpacked copy per content hash); the deploy of a node bundle with two npm dependencies, whose build
 * runs npm ci (cold: a new lockfile) or reuses the layer (cached: the same lockfile), next to a deploy without one;
 * the deploy of a go function, compiled then (cold) or reused (the same code), and its calls, which exec the program,
 * next to a one-off run of the same code, which compiles it each time; the deploy of a rust bundle (cargo) and of a
 * java handler bundle, each built at deploy, next to the same build as a one-off execution.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { join } from 'node:path';
import { type BenchContext, type GroupResult } from './lib/context.js';
import { deploy, invoke } from './lib/functions.js';
import { launchServer, type BenchServer } from './lib/server.js';
import { fmtMs, fmtRatio, quantile } from './lib/stats.js';
import { skippedRow, type Row } from './lib/table.js';

const GROUP = 'bundles' as const;
const PACKAGES = 50;
const FILES_PER_PACKAGE = 20;
/** 50 packages x 20 files x 50 KiB = 50 MiB of node_modules. */
const FILE_BYTES = 50 * 1024;
const SHARED = 20;
const ROWS = [
  { id: 'bundles.cold_start_deps', scenario: `Cold start of a node handler with ${Math.round((PACKAGES * FILES_PER_PACKAGE * FILE_BYTES) / 1048576)} MiB of node_modules (one package loaded) vs a dependency-free bundle`, target: '< 2x (issue 21)' },
  { id: 'bundles.deploy_50mb', scenario: 'Deploy of that bundle (PUT application/x-tar: upload, check, unpack)', target: 'measured' },
  { id: 'bundles.disk_shared', scenario: `Disk of the bundle store for ${SHARED} functions deployed from the same bundle`, target: 'one copy (issue 21)' },
  { id: 'bundles.build_cold', scenario: 'npm ci build, cold', target: 'measured' },
  { id: 'bundles.build_cached', scenario: 'npm ci build, cached (unchanged lockfile)', target: 'no rebuild' },
  { id: 'bundles.layer_shared', scenario: `Disk of the layer store for ${SHARED} functions with different code and the same lockfile`, target: 'one layer (issue 21)' },
  { id: 'bundles.go_deploy_compile', scenario: 'Deploy of a go code function: compiled at deploy (new code), and the same code again (cached)', target: 'compile < 3x a one-off run; cached: none' },
  { id: 'bundles.go_call_compiled', scenario: 'Call of a go function compiled at deploy (cold start) vs a one-off run of the same code (go build + run)', target: 'faster than compiling' },
  { id: 'bundles.apt_deploy', scenario: 'Deploy of a python handler with a Debian package (apt: python3-six): the image built (first deploy), then reused (another function, same package)', target: 'build ~ kindling images create; reused < 1 s' },
  { id: 'bundles.rust_deploy_compile', scenario: 'Deploy of a rust bundle (cargo package: a module, a path dependency) built at deploy (new code)', target: 'build < 3x a one-off cargo build' },
  { id: 'bundles.java_deploy_compile', scenario: 'Deploy of a java handler bundle (two packages) compiled at deploy with the agent (new code)', target: 'build < 3x a one-off javac' },
] as const;
const GO_ROWS = ROWS.slice(6, 8);
const APT_ROW = ROWS[8];
const COMPILED_BUNDLE_ROWS = ROWS.slice(9, 11);

/** The host's IPv4 resolvers and the registry's addresses, as /32s (the policy ignores what is public anyway). */
async function egressForRegistry(): Promise<string[]> {
  const resolvers = (await readFile('/etc/resolv.conf', 'utf8').catch(() => ''))
    .split('\n')
    .map((line) => /^nameserver\s+(\S+)/.exec(line.trim())?.[1])
    .filter((ip): ip is string => ip !== undefined && isIPv4(ip) && !ip.startsWith('127.'));
  const registry = await lookup('registry.npmjs.org', { all: true, family: 4 }).then((all) => all.map((a) => a.address), () => []);
  return [...resolvers, ...registry].map((ip) => `${ip}/32`);
}

const p50 = (samples: number[]): number => quantile([...samples].sort((a, b) => a - b), 0.5);


export async function runBundlesGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runsOverridden ? Math.min(ctx.runs.sandbox, 20) : 15;
  const skipAll = (reason: string): GroupResult => ({ rows: ROWS.map((row) => skippedRow(GROUP, row.id, row.scenario, row.target, reason)), data: { skipped: reason } });
  try {
    await access('/var/lib/kindling/images/node/rootfs');
  } catch {
    return skipAll('no rootfs at /var/lib/kindling/images/node/rootfs');
  }
  let server: BenchServer;
  try {
    // Builds reach the registry through network egress: a resolver or registry mirror on a private or documentation
    // address (as on these machines) must be opened, as an operator would (docs/security.md section 17).
    const open = await egressForRegistry();
    server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--max-bundle-bytes', String(128 * 1024 * 1024), '--tenant-max-code-bytes', '0', ...(open.length > 0 ? ['--egress-allow', open.join(',')] : [])] });
  } catch (error) {
    return skipAll(`server --executor sandbox did not start: ${error instanceof Error ? error.message : String(error)}`.slice(0, 200));
  }
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const url = server.url;
  try {
    const handler = "export async function handler(body) { return 'ok ' + body; }\n";
    const withDeps = join(ctx.workDir, 'bundle-deps');
    const plain = join(ctx.workDir, 'bundle-plain');
    for (const dir of [withDeps, plain]) await mkdir(join(dir, 'src'), { recursive: true });
    await writeFile(join(plain, 'src', 'index.mjs'), handler);
    await writeFile(join(withDeps, 'src', 'index.mjs'), `import { value } from 'pkg0';\n${handler.replace("'ok '", "'ok ' + value + ' '")}`);
    for (let p = 0; p < PACKAGES; p++) {
      const pkg = join(withDeps, 'node_modules', `pkg${p}`);
      await mkdir(pkg, { recursive: true });
      await writeFile(join(pkg, 'package.json'), JSON.stringify({ name: `pkg${p}`, version: '1.0.0', type: 'module', main: 'index.js' }));
      await writeFile(join(pkg, 'index.js'), `export const value = ${p};\n`);
      // Incompressible filler (what a real node_modules has in bytes, not in meaning).
      for (let f = 0; f < FILES_PER_PACKAGE; f++) await writeFile(join(pkg, `data${f}.bin`), randomBytes(FILE_BYTES));
    }
    const tarOf = (dir: string): Buffer => execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.'], { maxBuffer: 256 * 1024 * 1024 });
    const depsTar = tarOf(withDeps);
    const plainTar = tarOf(plain);
    const spec = { runtime: 'node', handler: 'src/index.mjs:handler' };
    ctx.log(`bundles: cold starts with ${(depsTar.length / 1048576).toFixed(0)} MiB of node_modules vs none, ${n} runs each (alternated)`);
    const deps: number[] = [];
    const none: number[] = [];
    const deploys: number[] = [];
    // Each sample is a fresh function (a new pool: its first invocation is a cold start); the same bytes each time,
    // so the deploy after the first finds the bundle unpacked already (the first deploy is timed separately).
    deploys.push(await deploy(url, 'deps-first', depsTar, spec));
    for (let i = 0; i < n; i++) {
      await deploy(url, `deps-${i}`, depsTar, spec);
      await deploy(url, `none-${i}`, plainTar, spec);
      const a = await invoke(url, `deps-${i}`);
      const b = await invoke(url, `none-${i}`);
      if (!a.cold || !b.cold) throw new Error('a first invocation was not a cold start');
      if (a.body !== 'ok 0 x' || b.body !== 'ok x') throw new Error(`unexpected answers: ${a.body} / ${b.body}`);
      deps.push(a.ms);
      none.push(b.ms);
      // The pools' sandboxes go with their functions (bounded warm capacity, no interference with the next pair).
      await fetch(`${url}/v1/functions/deps-${i}`, { method: 'DELETE' });
      await fetch(`${url}/v1/functions/none-${i}`, { method: 'DELETE' });
    }
    ctx.log(`bundles: cold start p50 ${fmtMs(p50(deps))} with node_modules, ${fmtMs(p50(none))} without; deploys next`);
    const ratio = p50(deps) / p50(none);
    rows.push({ group: GROUP, id: ROWS[0].id, scenario: ROWS[0].scenario, kindling: `p50 ${fmtMs(p50(deps))}`, baseline: `p50 ${fmtMs(p50(none))} (no dependencies)`, ratio: fmtRatio(ratio), target: ROWS[0].target, status: ratio < 2 ? 'pass' : 'fail' });
    // A cold deploy of the 50 MB bundle: different bytes each time (one file changed), so each is unpacked.
    for (let i = 0; i < Math.min(n, 5); i++) {
      await writeFile(join(withDeps, 'src', 'stamp.txt'), String(i));
      deploys.push(await deploy(url, `deps-cold-${i}`, tarOf(withDeps), spec));
      await fetch(`${url}/v1/functions/deps-cold-${i}`, { method: 'DELETE' });
    }
    rows.push({ group: GROUP, id: ROWS[1].id, scenario: ROWS[1].scenario, kindling: `p50 ${fmtMs(p50(deploys))} for ${(depsTar.length / 1048576).toFixed(0)} MiB`, baseline: '—', ratio: '—', target: ROWS[1].target, status: 'info' });
    // 20 functions, one bundle: the store keeps one unpacked copy. (Each version counts the archive's bytes against
    // the tenant's maxCodeBytes, so the server runs without that cap here.)
    for (let i = 0; i < SHARED; i++) await deploy(url, `shared-${i}`, depsTar, spec);
    const du = (path: string): number => Number(execFileSync('du', ['-sb', path], { encoding: 'utf8' }).split('\t')[0]);
    const storeBytes = du(join(server.dataDir, 'bundles'));
    const oneCopy = du(join(withDeps));
    rows.push({
      group: GROUP,
      id: ROWS[2].id,
      scenario: ROWS[2].scenario,
      kindling: `${(storeBytes / 1048576).toFixed(1)} MiB`,
      baseline: `${((oneCopy * SHARED) / 1048576).toFixed(1)} MiB (a copy each)`,
      ratio: fmtRatio(storeBytes / (oneCopy * SHARED)),
      target: ROWS[2].target,
      status: storeBytes < oneCopy * 1.5 ? 'pass' : 'fail',
    });
    // Dependency builds: ms@2.1.3 + kleur@4.1.5 from the registry. Each cold sample has a lockfile of its own (the
    // project's name differs), so its layer is new; a cached sample changes only the code (same lockfile, no build).
    const runs = Math.min(n, 3);
    const cold: number[] = [];
    const cached: number[] = [];
    const bare: number[] = [];
    let reused = true;
    try {
      for (let i = 0; i < runs; i++) {
        const dir = join(ctx.workDir, `build-${i}`);
        await mkdir(dir, { recursive: true });
        await writeFile(join(dir, 'package.json'), JSON.stringify({ name: `bench-app-${i}-${Date.now()}`, version: '1.0.0', type: 'module', dependencies: { ms: '2.1.3', kleur: '4.1.5' } }));
        await writeFile(join(dir, 'index.js'), "import ms from 'ms';\nexport const handler = (b) => String(ms(String(b)));\n");
        execFileSync('npm', ['install', '--package-lock-only', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'ignore' });
        const buildSpec = { runtime: 'node', handler: 'index.js:handler' };
        cold.push(await deploy(url, `build-${i}`, tarOf(dir), buildSpec));
        await writeFile(join(dir, 'index.js'), "import ms from 'ms';\nexport const handler = (b) => String(ms(String(b))) + '!';\n");
        cached.push(await deploy(url, `build-${i}`, tarOf(dir), buildSpec));
        const view = (await (await fetch(`${url}/v1/functions/build-${i}`)).json()) as { layer?: { reused?: boolean } };
        reused &&= view.layer?.reused === true;
        // The same bundle without a lockfile: no build (the deploy floor).
        await rm(join(dir, 'package-lock.json'));
        bare.push(await deploy(url, `bare-${i}`, tarOf(dir), buildSpec));
      }
      rows.push({ group: GROUP, id: ROWS[3].id, scenario: `${ROWS[3].scenario} (ms + kleur from the registry, deploy answered after the build), n=${runs}`, kindling: `p50 ${fmtMs(p50(cold))}`, baseline: `p50 ${fmtMs(p50(bare))} (same bundle, no lockfile)`, ratio: fmtRatio(p50(cold) / p50(bare)), target: ROWS[3].target, status: 'info' });
      rows.push({ group: GROUP, id: ROWS[4].id, scenario: `${ROWS[4].scenario}, n=${runs}`, kindling: `p50 ${fmtMs(p50(cached))}`, baseline: `p50 ${fmtMs(p50(bare))} (same bundle, no lockfile)`, ratio: fmtRatio(p50(cached) / p50(bare)), target: ROWS[4].target, status: reused ? 'pass' : 'fail' });
      // Layer sharing: SHARED functions, each with code of its own and the same lockfile, install it once.
      const sharedDir = join(ctx.workDir, 'layer-shared');
      await mkdir(sharedDir, { recursive: true });
      await writeFile(join(sharedDir, 'package.json'), JSON.stringify({ name: `bench-shared-${Date.now()}`, version: '1.0.0', type: 'module', dependencies: { ms: '2.1.3', kleur: '4.1.5' } }));
      execFileSync('npm', ['install', '--package-lock-only', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: sharedDir, stdio: 'ignore' });
      const layersBefore = du(join(server.dataDir, 'layers'));
      let layerBytes = 0;
      for (let i = 0; i < SHARED; i++) {
        await writeFile(join(sharedDir, 'index.js'), `import ms from 'ms';\nexport const handler = (b) => String(ms(String(b))) + ' ${i}';\n`);
        await deploy(url, `layer-shared-${i}`, tarOf(sharedDir), { runtime: 'node', handler: 'index.js:handler' });
        if (i === 0) layerBytes = du(join(server.dataDir, 'layers')) - layersBefore;
      }
      const sharedBytes = du(join(server.dataDir, 'layers')) - layersBefore;
      rows.push({
        group: GROUP,
        id: ROWS[5].id,
        scenario: ROWS[5].scenario,
        kindling: `${(sharedBytes / 1048576).toFixed(2)} MiB`,
        baseline: `${((layerBytes * SHARED) / 1048576).toFixed(2)} MiB (a layer each)`,
        ratio: fmtRatio(sharedBytes / (layerBytes * SHARED)),
        target: ROWS[5].target,
        status: sharedBytes <= layerBytes * 1.1 ? 'pass' : 'fail',
      });
      Object.assign(data, { layerShared: { functions: SHARED, layerBytes, sharedBytes } });
    } catch (error) {
      for (const row of ROWS.slice(3, 6)) rows.push(skippedRow(GROUP, row.id, row.scenario, row.target, `the build failed (registry unreachable?): ${error instanceof Error ? error.message : String(error)}`.slice(0, 200)));
    }
    try {
      Object.assign(data, { go: await goRows(ctx, url, n, rows) });
    } catch (error) {
      for (const row of GO_ROWS) rows.push(skippedRow(GROUP, row.id, row.scenario, row.target, `${error instanceof Error ? error.message : String(error)}`.slice(0, 200)));
    }
    try {
      Object.assign(data, { compiledBundles: await compiledBundleRows(ctx, url, rows) });
    } catch (error) {
      for (const row of COMPILED_BUNDLE_ROWS) rows.push(skippedRow(GROUP, row.id, row.scenario, row.target, `${error instanceof Error ? error.message : String(error)}`.slice(0, 200)));
    }
    try {
      Object.assign(data, { apt: await aptRow(ctx, url, rows) });
    } catch (error) {
      rows.push(skippedRow(GROUP, APT_ROW.id, APT_ROW.scenario, APT_ROW.target, `${error instanceof Error ? error.message : String(error)}`.slice(0, 200)));
    }
    Object.assign(data, { bundles: { coldDepsMs: deps, coldNoneMs: none, deployMs: deploys, storeBytes, oneCopyBytes: oneCopy, tarBytes: depsTar.length, buildColdMs: cold, buildCachedMs: cached, deployNoLockMs: bare } });
  } finally {
    await server.stop();
  }
  return { rows, data };
}

/** Go compiled at deploy: deploys cold (new code) and cached (the same code), then calls against one-off runs. */
async function goRows(ctx: BenchContext, url: string, n: number, rows: Row[]): Promise<Record<string, unknown>> {
  const runs = Math.min(n, 5);
  const program = (i: number): string => `package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("go", ${i}) }\n// ${Date.now()}\n`;
  const put = async (name: string, code: string): Promise<{ ms: number; reused: boolean }> => {
    const started = performance.now();
    const response = await fetch(`${url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'go', code }) });
    const view = (await response.json()) as { layer?: { kind?: string; reused?: boolean } };
    const ms = performance.now() - started;
    if (response.status !== 201 && response.status !== 200) throw new Error(`deploy of ${name} answered ${response.status}: ${JSON.stringify(view).slice(0, 300)}`);
    if (view.layer?.kind !== 'compile') throw new Error(`deploy of ${name} compiled nothing`);
    return { ms, reused: view.layer.reused === true };
  };
  ctx.log(`bundles: go compiled at deploy, ${runs} runs`);
  const cold: number[] = [];
  const cached: number[] = [];
  const calls: number[] = [];
  const oneOff: number[] = [];
  let reused = true;
  for (let i = 0; i < runs; i++) {
    const code = program(i);
    const first = await put(`go-${i}`, code);
    if (first.reused) throw new Error('a new program was found compiled already');
    cold.push(first.ms);
    const again = await put(`go-again-${i}`, code);
    reused &&= again.reused;
    cached.push(again.ms);
    const call = await invoke(url, `go-${i}`);
    if (call.body !== `go ${i}\n`) throw new Error(`unexpected answer ${call.body}`);
    calls.push(call.ms);
    const started = performance.now();
    const response = await fetch(`${url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'go', code }) });
    const result = (await response.json()) as { stdout?: string };
    oneOff.push(performance.now() - started);
    if (result.stdout !== `go ${i}\n`) throw new Error(`unexpected one-off answer ${JSON.stringify(result).slice(0, 200)}`);
    for (const name of [`go-${i}`, `go-again-${i}`]) await fetch(`${url}/v1/functions/${name}`, { method: 'DELETE' });
  }
  // A deploy that compiles pays the build sandbox, the archive and the store on top of the compile a one-off run does.
  const compileRatio = p50(cold) / p50(oneOff);
  rows.push({
    group: GROUP,
    id: GO_ROWS[0]!.id,
    scenario: `${GO_ROWS[0]!.scenario}, n=${runs}`,
    kindling: `p50 ${fmtMs(p50(cold))} compiled, ${fmtMs(p50(cached))} cached`,
    baseline: `p50 ${fmtMs(p50(oneOff))} (one-off run: go build + run)`,
    ratio: fmtRatio(compileRatio),
    target: GO_ROWS[0]!.target,
    status: reused && compileRatio < 3 ? 'pass' : 'fail',
  });
  const ratio = p50(calls) / p50(oneOff);
  rows.push({ group: GROUP, id: GO_ROWS[1]!.id, scenario: `${GO_ROWS[1]!.scenario}, n=${runs}`, kindling: `p50 ${fmtMs(p50(calls))}`, baseline: `p50 ${fmtMs(p50(oneOff))} (one-off run, compiled per call)`, ratio: fmtRatio(ratio), target: GO_ROWS[1]!.target, status: ratio < 1 ? 'pass' : 'fail' });
  return { deployColdMs: cold, deployCachedMs: cached, callMs: calls, oneOffMs: oneOff };
}

/**
 * Rust and java bundles compiled at deploy: each deploy has new code (a comment with the run's number), so every one
 * builds. Baseline: the same build as a one-off execution of the runtime's image, the bundle's tar on stdin (cargo
 * build --release --offline and run; javac of the same sources), what a user without deploy-time builds would pay.
 */
async function compiledBundleRows(ctx: BenchContext, url: string, rows: Row[]): Promise<Record<string, unknown>> {
  const runs = 3;
  const dir = join(ctx.workDir, 'compiled-bundles');
  const tarOf = (files: Record<string, string>): Buffer => {
    execFileSync('rm', ['-rf', dir]);
    for (const [name, content] of Object.entries(files)) {
      execFileSync('mkdir', ['-p', join(dir, name, '..')]);
      execFileSync('tee', [join(dir, name)], { input: content, stdio: ['pipe', 'ignore', 'inherit'] });
    }
    return execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.']);
  };
  const rust = (i: number): Record<string, string> => ({
    'Cargo.toml': '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\nshout = { path = "shout" }\n',
    'shout/Cargo.toml': '[package]\nname = "shout"\nversion = "0.1.0"\nedition = "2021"\n',
    'shout/src/lib.rs': 'pub fn shout(s: &str) -> String { s.to_uppercase() }\n',
    'src/greet.rs': 'pub fn hello() -> &\'static str { "hello" }\n',
    'src/main.rs': `mod greet;\n// run ${i} ${Date.now()}\nfn main() { println!("{} ${i}", shout::shout(greet::hello())); }\n`,
  });
  const java = (i: number): Record<string, string> => ({
    'src/app/Api.java': `package app;\n// run ${i} ${Date.now()}\npublic class Api { public static String handle(String body) { return util.Words.shout(body) + " ${i}"; } }\n`,
    'src/util/Words.java': 'package util;\npublic final class Words { public static String shout(String s) { return s.toUpperCase(); } }\n',
  });
  const oneOff = async (image: string, script: string, tar: Buffer, expect: string): Promise<number> => {
    const started = performance.now();
    const response = await fetch(`${url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image, command: ['sh', '-c', `mkdir -p /tmp/p && tar -x -C /tmp/p && cd /tmp/p && ${script}`], stdinBase64: tar.toString('base64'), timeoutMs: 300_000, memoryMb: 1024 }) });
    const result = (await response.json()) as { stdout?: string; stderr?: string; exitCode?: number };
    const ms = performance.now() - started;
    if (result.exitCode !== 0 || !(result.stdout ?? '').includes(expect)) throw new Error(`the one-off build failed: ${JSON.stringify(result).slice(0, 300)}`);
    return ms;
  };
  const results: Record<string, { deployMs: number[]; oneOffMs: number[] }> = {};
  for (const [k, kind] of (['rust', 'java'] as const).entries()) {
    ctx.log(`bundles: ${kind} bundles compiled at deploy, ${runs} runs`);
    const deploys: number[] = [];
    const oneOffs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const name = `${kind}-bundle-${i}`;
      const tar = kind === 'rust' ? tarOf(rust(i)) : tarOf(java(i));
      deploys.push(await deploy(url, name, tar, kind === 'rust' ? { runtime: 'rust' } : { runtime: 'java', handler: 'src/app/Api.java:app.Api.handle' }));
      const call = await invoke(url, name);
      if (call.body !== (kind === 'rust' ? `HELLO ${i}\n` : `X ${i}`)) throw new Error(`unexpected answer of ${name}: ${call.body}`);
      oneOffs.push(
        kind === 'rust'
          ? await oneOff('kindling/rust', 'CARGO_HOME=/tmp/cargo cargo build -q --release --offline && ./target/release/app', tar, `HELLO ${i}`)
          : await oneOff('kindling/java', "javac -J-XX:+UseSerialGC -d /tmp/c $(find . -name '*.java') && echo compiled", tar, 'compiled'),
      );
      await fetch(`${url}/v1/functions/${name}`, { method: 'DELETE' });
    }
    const ratio = p50(deploys) / p50(oneOffs);
    const row = COMPILED_BUNDLE_ROWS[k]!;
    rows.push({
      group: GROUP,
      id: row.id,
      scenario: `${row.scenario}, n=${runs}`,
      kindling: `p50 ${fmtMs(p50(deploys))}`,
      baseline: `p50 ${fmtMs(p50(oneOffs))} (one-off ${kind === 'rust' ? 'cargo build + run' : 'javac'} of the same files)`,
      ratio: fmtRatio(ratio),
      target: row.target,
      status: ratio < 3 ? 'pass' : 'fail',
    });
    results[kind] = { deployMs: deploys, oneOffMs: oneOffs };
  }
  return results;
}

/**
 * Debian packages for a function: the first deploy builds the image (runtime's + the package), a second function with
 * the same package reuses it. Baseline: the same image made the two-step way (PUT /v1/images, polled until ready).
 * One run each: a build takes tens of seconds.
 */
async function aptRow(ctx: BenchContext, url: string, rows: Row[]): Promise<Record<string, unknown>> {
  const code = 'import six\n\ndef handler(body):\n    return six.ensure_binary(six.__name__)\n';
  const put = async (name: string): Promise<{ ms: number; image: string }> => {
    const started = performance.now();
    const response = await fetch(`${url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', handler: 'handler', code, apt: ['python3-six'] }) });
    const view = (await response.json()) as { aptImage?: string };
    const ms = performance.now() - started;
    if (response.status !== 201 && response.status !== 200) throw new Error(`deploy of ${name} answered ${response.status}: ${JSON.stringify(view).slice(0, 300)}`);
    return { ms, image: view.aptImage ?? '' };
  };
  ctx.log('bundles: a python handler with a Debian package, built then reused');
  const built = await put('apt-first');
  const reused = await put('apt-second');
  const call = await invoke(url, 'apt-second');
  if (call.body !== 'six') throw new Error(`unexpected answer ${call.body}`);
  const image = `bench-six-${process.pid}`;
  const started = performance.now();
  const created = await fetch(`${url}/v1/images/${image}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ from: 'python', apt: ['python3-six'] }) });
  if (created.status !== 202) throw new Error(`image create answered ${created.status}: ${(await created.text()).slice(0, 300)}`);
  let status = 'building';
  while (status === 'building') {
    await new Promise((resolve) => setTimeout(resolve, 200));
    status = ((await (await fetch(`${url}/v1/images/${image}`)).json()) as { status: string }).status;
  }
  const createMs = performance.now() - started;
  await fetch(`${url}/v1/images/${image}`, { method: 'DELETE' });
  for (const name of ['apt-first', 'apt-second']) await fetch(`${url}/v1/functions/${name}`, { method: 'DELETE' });
  const ratio = built.ms / createMs;
  rows.push({
    group: GROUP,
    id: APT_ROW.id,
    scenario: APT_ROW.scenario,
    kindling: `built ${fmtMs(built.ms)}, reused ${fmtMs(reused.ms)}`,
    baseline: `${fmtMs(createMs)} (kindling images create of the same image)`,
    ratio: fmtRatio(ratio),
    target: APT_ROW.target,
    status: status === 'ready' && built.image === reused.image && ratio < 1.5 && reused.ms < 1000 ? 'pass' : 'fail',
  });
  return { builtMs: built.ms, reusedMs: reused.ms, imagesCreateMs: createMs };
}
