/**
 * A local PEP 503 package index (in a container) that python dependency builds install from, and that holds a build
 * on purpose: a request for a `kgate*` project waits until the test releases it, so "the build is still running" is
 * a state the test controls, not a timing it hopes for.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { docker } from './server.js';
import { waitFor } from './wait.js';

const b64 = (data: Buffer): string => data.toString('base64url');

/** A pure-python wheel of `name` whose module greets with `greeting`, and its PEP 503 page, under `root/simple/name`. */
export function addProject(root: string, name: string, greeting: string): void {
  const dir = join(root, 'simple', name);
  mkdirSync(dir, { recursive: true });
  const distInfo = `${name}-1.0.0.dist-info`;
  const files: Record<string, string> = {
    [`${name}/__init__.py`]: `def greet(who):\n    return "${greeting} " + who\n`,
    [`${distInfo}/METADATA`]: `Metadata-Version: 2.1\nName: ${name}\nVersion: 1.0.0\n`,
    [`${distInfo}/WHEEL`]: 'Wheel-Version: 1.0\nGenerator: kindling-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
  };
  const record = Object.entries(files).map(([path, content]) => `${path},sha256=${b64(createHash('sha256').update(content).digest())},${Buffer.byteLength(content)}`);
  files[`${distInfo}/RECORD`] = `${record.join('\n')}\n${distInfo}/RECORD,,\n`;
  const wheel = `${name}-1.0.0-py3-none-any.whl`;
  const script = 'import json, sys, zipfile\nfiles = json.load(sys.stdin)\nwith zipfile.ZipFile(sys.argv[1], "w") as z:\n    for path, content in files.items():\n        z.writestr(path, content)\n';
  execFileSync('python3', ['-c', script, join(dir, wheel)], { input: JSON.stringify(files) });
  const digest = createHash('sha256').update(readFileSync(join(dir, wheel))).digest('hex');
  writeFileSync(join(dir, 'index.html'), `<!DOCTYPE html><html><body><a href="${wheel}#sha256=${digest}">${wheel}</a></body></html>\n`);
}

/** The index server: a `kgate*` project's page waits for /srv/release-<project>, then is served (404 if absent). */
export const INDEX_SERVER = [
  'import functools, http.server, os, time',
  'class H(http.server.SimpleHTTPRequestHandler):',
  '    def do_GET(self):',
  '        parts = self.path.split("/")',
  '        if len(parts) > 2 and parts[2].startswith("kgate"):',
  '            while not os.path.exists("/srv/release-" + parts[2]):',
  '                time.sleep(0.05)',
  '        super().do_GET()',
  'http.server.ThreadingHTTPServer(("", 8000), functools.partial(H, directory="/srv")).serve_forever()',
].join('\n');

export interface GatedIndex {
  /** The index's URL (--pip-index-url) and address (for --egress-allow). */
  url: string;
  ip: string;
  /** Lets builds waiting on `project` go on. */
  release(project: string): void;
  /** Releases the given projects and removes the container. */
  stop(projects: string[]): Promise<void>;
}

/** Serves `projects` (name -> greeting) from a fresh directory under `work`, in a kindling/python container labelled `label`. */
export async function startGatedIndex(work: string, projects: Record<string, string>, label: string): Promise<GatedIndex> {
  const index = mkdtempSync(join(work, 'index-'));
  for (const [name, greeting] of Object.entries(projects)) addProject(index, name, greeting);
  writeFileSync(join(index, 'simple', 'index.html'), '<!DOCTYPE html><html><body></body></html>\n');
  execFileSync('chmod', ['-R', 'a+rX', index]);
  const container = await docker.createContainer({
    Image: 'kindling/python',
    Cmd: ['python3', '-c', INDEX_SERVER],
    Labels: { 'dev.kindling.test': label },
    HostConfig: { Binds: [`${index}:/srv:ro`], AutoRemove: false, NetworkMode: 'bridge' },
  });
  const release = (project: string): void => writeFileSync(join(index, `release-${project}`), '');
  try {
    await container.start();
    const ip = (await container.inspect()).NetworkSettings.Networks.bridge?.IPAddress;
    assert.ok(ip, 'the index container has a bridge address');
    const url = `http://${ip}:8000/simple`;
    const first = Object.keys(projects).find((name) => !name.startsWith('kgate'));
    if (first !== undefined) await waitFor(async () => (await fetch(`${url}/${first}/`).catch(() => null))?.ok === true, { what: 'the package index to answer' });
    return {
      url,
      ip,
      release,
      async stop(gated) {
        for (const project of gated) release(project);
        await container.remove({ force: true }).catch(() => undefined);
      },
    };
  } catch (error) {
    await container.remove({ force: true }).catch(() => undefined);
    throw error;
  }
}
