/**
 * Plays another, unprivileged user of the host (uid/gid 65533, no groups): lists what it can see of the server's data
 * dir and of every process. The server (root) walks the data dir first and hands the spy every path, so the spy needs
 * no luck finding names: it only has to be refused.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, lstat, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const SPY_UID = 65533;

export interface SpyReport {
  /** Processes whose cmdline or environ, as readable by the spy, contain a secret. */
  procHits: { pid: string; file: string; comm: string }[];
  /** Paths under the data dir the spy could list, open, or connect to. */
  opened: { path: string; how: string }[];
  /** How many paths it tried. */
  tried: number;
}

const SPY = String.raw`
import fs from 'node:fs';
import net from 'node:net';
const { entries, secrets } = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const procHits = [];
for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
  for (const file of ['cmdline', 'environ']) {
    let text = '';
    try { text = fs.readFileSync('/proc/' + pid + '/' + file, 'latin1'); } catch { continue; }
    if (secrets.some((s) => text.includes(s))) {
      let comm = '?';
      try { comm = fs.readFileSync('/proc/' + pid + '/comm', 'utf8').trim(); } catch {}
      procHits.push({ pid, file, comm });
    }
  }
}
const opened = [];
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
for (const { path, type } of entries) {
  if (type === 'dir') {
    try { fs.readdirSync(path); opened.push({ path, how: 'list' }); } catch {}
  } else if (type === 'socket') {
    await new Promise((resolve) => {
      const s = net.connect(path);
      s.once('connect', () => { opened.push({ path, how: 'connect' }); s.destroy(); resolve(); });
      s.once('error', resolve);
    });
  } else {
    for (const [how, flags] of [['read', O_RDONLY | O_NONBLOCK], ['write', O_WRONLY | O_NONBLOCK]]) {
      try { fs.closeSync(fs.openSync(path, flags)); opened.push({ path, how }); }
      catch (e) { if (e.code === 'ENXIO') opened.push({ path, how: how + ' (fifo without reader)' }); }
    }
  }
}
process.stdout.write(JSON.stringify({ procHits, opened, tried: entries.length }));
`;

/** Mount points of the runtime images' overlays (public content: the images dir is world-readable anyway). */
function overlayMounts(): Set<string> {
  const points = new Set<string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (right?.startsWith('overlay ')) points.add(left!.split(' ')[4]!);
  }
  return points;
}

async function walk(dir: string, out: { path: string; type: string }[], skip = overlayMounts()): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const path = join(dir, name);
    let st;
    try {
      st = await lstat(path);
    } catch {
      continue; // gone meanwhile
    }
    const type = st.isDirectory() ? 'dir' : st.isSocket() ? 'socket' : st.isFIFO() ? 'fifo' : st.isFile() ? 'file' : 'other';
    if (type === 'other') continue;
    if (skip.has(path)) continue;
    out.push({ path, type });
    if (type === 'dir') await walk(path, out, skip);
  }
}

export async function spyAsOtherUser(options: { dataDir: string; secrets: string[]; ignore?: string[] }): Promise<SpyReport> {
  const found: { path: string; type: string }[] = [{ path: options.dataDir, type: 'dir' }];
  await walk(options.dataDir, found);
  const entries = found.filter((entry) => !(options.ignore ?? []).includes(entry.path));
  const dir = await mkdtemp(join(tmpdir(), 'kindling-spy-'));
  try {
    await chmod(dir, 0o755);
    await writeFile(join(dir, 'spy.mjs'), SPY, { mode: 0o644 });
    await writeFile(join(dir, 'input.json'), JSON.stringify({ entries, secrets: options.secrets }), { mode: 0o644 });
    const { stdout } = await execFileAsync(
      '/usr/bin/setpriv',
      [`--reuid=${SPY_UID}`, `--regid=${SPY_UID}`, '--clear-groups', '--', process.execPath, join(dir, 'spy.mjs'), join(dir, 'input.json')],
      { env: {}, cwd: '/', maxBuffer: 16 * 1024 * 1024 },
    );
    return JSON.parse(stdout) as SpyReport;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
