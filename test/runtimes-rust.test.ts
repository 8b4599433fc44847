/**
 * Rust bundles end to end on a real server: a cargo package (a module of its own, a path dependency) deployed without a
 * command is built at deploy with `cargo build --release --offline` in kindling/rust, and its one binary runs in the
 * bundle's directory with the invocation's body on stdin; a crate that is neither vendored nor a path dependency fails
 * the deploy with how to vendor it. On the sandbox executor, and on docker where the engine is reachable.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Kindling, type KindlingError } from '@kindling/sdk';
import { directoryMaker } from './helpers/directories.js';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const directory = directoryMaker('kindling-rust-');
const tar = (dir: string): Buffer => execFileSync('tar', ['-cf', '-', '-C', dir, '.']);

const CLI = new URL('../src/main.js', import.meta.url).pathname;

const PACKAGE = {
  'Cargo.toml': '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\nshout = { path = "crates/shout" }\n',
  'crates/shout/Cargo.toml': '[package]\nname = "shout"\nversion = "0.1.0"\nedition = "2021"\n',
  'crates/shout/src/lib.rs': 'pub fn shout(text: &str) -> String {\n    format!("{}!", text.to_uppercase())\n}\n',
  'src/greet.rs': 'pub fn hello(name: &str) -> String {\n    format!("hello {}", name)\n}\n',
  'src/main.rs':
    'mod greet;\n\nuse std::io::Read;\n\nfn main() {\n    let mut input = String::new();\n    std::io::stdin().read_to_string(&mut input).unwrap();\n' +
    '    let data = std::fs::read_to_string("data.txt").unwrap();\n    println!("{} {}", shout::shout(&greet::hello(data.trim())), input.trim());\n}\n',
  'data.txt': 'bundle\n',
};

for (const executor of ['sandbox', 'docker'] as const) {
  const unavailable = executor === 'sandbox' ? await sandboxUnavailableReason() : await dockerUnavailableReason();
  describe(`rust bundles (${executor} executor)`, { skip: unavailable ?? false }, () => {
    let server: TestServer;
    let client: Kindling;
    before(async () => {
      server = await startTestServer({ executor });
      client = new Kindling({ url: server.url });
    });
    after(() => server?.stop());

    it('a cargo package without a command is built at deploy (offline, path dependencies) and its binary runs in the bundle\'s directory', async () => {
      const name = `rust-bundle-${executor}`;
      const bundle = tar(directory(PACKAGE));
      const info = await client.functions.deployBundle(name, { runtime: 'rust' }, bundle);
      assert.equal(info.layer?.kind, 'compile');
      assert.equal((await client.functions.invoke(name, 'in')).text(), 'HELLO BUNDLE! in\n');
      // The same bundle again (the same bytes: same content hash), by another function: nothing is compiled.
      const again = await client.functions.deployBundle(`${name}-again`, { runtime: 'rust' }, bundle);
      assert.equal(again.layer?.sha256, info.layer?.sha256);
      assert.equal(again.layer?.reused, true);
    });

    it('the CLI deploys a rust bundle from a directory without a command (kindling deploy NAME --dir DIR --runtime rust)', async () => {
      const name = `rust-cli-${executor}`;
      const deployed = await promisify(execFile)('node', [CLI, 'deploy', name, '--dir', directory(PACKAGE), '--runtime', 'rust', '--url', server.url], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
      assert.match(deployed.stdout + deployed.stderr, new RegExp(`deployed ${name} version 1`));
      assert.equal((await client.functions.invoke(name, 'cli')).text(), 'HELLO BUNDLE! cli\n');
    });

    it('a crate that is not vendored fails the deploy with how to vendor it; a package with no Cargo.toml says what a rust bundle is', async () => {
      const needy = directory({ ...PACKAGE, 'Cargo.toml': '[package]\nname = "needy"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\nserde = "1"\n' });
      const failed = await client.functions.deployBundle(`rust-needy-${executor}`, { runtime: 'rust' }, tar(needy)).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(failed.code, 'BUILD_FAILED');
      assert.match(failed.message, /cargo vendor/);
      const loose = directory({ 'main.rs': 'fn main() {}\n' });
      const refused = await client.functions.deployBundle(`rust-loose-${executor}`, { runtime: 'rust' }, tar(loose)).then(
        () => assert.fail('expected BUILD_FAILED'),
        (error: KindlingError) => error,
      );
      assert.equal(refused.code, 'BUILD_FAILED');
      assert.match(refused.message, /Cargo\.toml at its root/);
    });
  });
}
