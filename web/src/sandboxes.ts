/**
 * The Sandboxes page: the key's persistent sandboxes (refreshed with the other lists), a form to create one, and for
 * the one opened: pause/resume, snapshot, fork, delete, a terminal (terminal.ts, loaded on first use: xterm.js is most
 * of the console's weight) and a file browser (folders made, downloaded as tar); the tenant's snapshots, each one a
 * button away from a new sandbox. Every failure shows the API's `CODE: message` as it came.
 */
import { api, errorText, json, jsonBody, session } from './api.js';
import { $, button, fill, row, say, setCell, type Cell } from './dom.js';
import type { ConsoleTerminal } from './terminal.js';

interface SandboxView {
  id: string;
  state: string;
  executor: string;
  image: string;
  runtime: string | null;
  limits: { memoryMb: number; cpus: number; pids: number; diskMb: number };
  createdAt: string;
  stopReason: string | null;
  usage: { cpuMs: number | null; memoryPeakBytes: number | null } | null;
}

interface SnapshotView {
  id: string;
  sandboxId: string;
  executor: string;
  createdAt: string;
  bytes: number;
  memory: boolean;
}

interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  modifiedAt: string;
}

const COLUMNS = 8;
const MIB = 1024 * 1024;
const base = (id: string): string => `/v1/sandboxes/${encodeURIComponent(id)}`;

/** Rows by sandbox id, updated in place: a refresh must not take the keyboard focus off a row's button. */
const rows = new Map<string, HTMLTableRowElement>();
let opened: string | null = null;
let filesPath = '/work';
let terminal: ConsoleTerminal | null = null;

function cells(sb: SandboxView): Cell[] {
  const memory = sb.usage?.memoryPeakBytes;
  const cpu = sb.usage?.cpuMs;
  return [
    sb.id,
    { text: sb.state, className: `state-${sb.state}` },
    sb.executor,
    sb.runtime ?? sb.image,
    new Date(sb.createdAt).toLocaleString(),
    { text: cpu === null || cpu === undefined ? '—' : `${Math.round(cpu)} ms`, num: true },
    { text: `${memory === null || memory === undefined ? '—' : (memory / MIB).toFixed(1)} / ${sb.limits.memoryMb} MiB`, num: true },
  ];
}

export async function loadSandboxes(): Promise<void> {
  const [{ sandboxes }] = await Promise.all([json<{ sandboxes: SandboxView[] }>('/v1/sandboxes'), loadSnapshots()]);
  sandboxes.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  const body = $('sandboxes-body');
  const seen = new Set<string>();
  for (const sb of sandboxes) {
    seen.add(sb.id);
    let tr = rows.get(sb.id);
    if (tr === undefined) {
      tr = row(cells(sb));
      const td = document.createElement('td');
      td.append(button('Open', `Open sandbox ${sb.id}`, () => void openSandbox(sb.id)));
      tr.append(td);
      tr.dataset.id = sb.id;
      rows.set(sb.id, tr);
      body.append(tr);
    } else {
      cells(sb).forEach((cell, i) => setCell(tr!.cells[i]!, cell));
    }
    if (sb.id === opened) showState(sb);
  }
  for (const [id, tr] of rows) {
    if (seen.has(id)) continue;
    tr.remove();
    rows.delete(id);
  }
  body.querySelector('tr.empty')?.remove();
  if (rows.size === 0) {
    fill('sandboxes-body', [], 'No sandboxes: create one below (or with the SDK, the CLI: kindling sandbox create).', COLUMNS);
    body.querySelector('tr')?.classList.add('empty');
  }
  if (opened !== null && !seen.has(opened)) closeSandbox(`Sandbox ${opened} is gone (deleted, or its record expired).`);
}

function showState(sb: SandboxView): void {
  $('sandbox-state').textContent = `${sb.state}${sb.stopReason ? ` (${sb.stopReason})` : ''} · ${sb.executor} · ${sb.runtime ?? sb.image} · ${sb.limits.memoryMb} MiB, ${sb.limits.cpus} CPU, ${sb.limits.diskMb} MiB disk`;
  $<HTMLButtonElement>('sandbox-pause').disabled = sb.state !== 'running';
  $<HTMLButtonElement>('sandbox-resume').disabled = sb.state === 'running';
  $<HTMLButtonElement>('sandbox-hibernate').disabled = sb.state === 'hibernated' || sb.state === 'stopped';
}

async function openSandbox(id: string): Promise<void> {
  if (opened !== id) {
    terminal?.close();
    $('terminal-status').textContent = '';
    $('terminal').replaceChildren();
    terminal = null;
    filesPath = '/work';
  }
  opened = id;
  say('sandboxes-status', '');
  $('sandbox-detail').hidden = false;
  $('sandbox-title').textContent = `Sandbox ${id}`;
  say('sandbox-status', '');
  $('sandbox-title').focus();
  try {
    showState(await json<SandboxView>(base(id)));
  } catch (error) {
    say('sandbox-status', errorText(error), 'error');
  }
  await listFiles(filesPath);
}

function closeSandbox(message = ''): void {
  terminal?.close();
  terminal = null;
  opened = null;
  $('sandbox-detail').hidden = true;
  $('terminal').replaceChildren();
  say('sandboxes-status', message);
}

/** Runs one action on the opened sandbox and says how it went; the list is reloaded after it. */
async function act(what: string, run: (id: string) => Promise<string>): Promise<void> {
  const id = opened;
  if (id === null) return;
  say('sandbox-status', `${what}…`);
  try {
    say('sandbox-status', await run(id), 'ok');
  } catch (error) {
    say('sandbox-status', errorText(error), 'error');
  }
  await loadSandboxes().catch(() => undefined);
}

const post = (path: string, body: unknown = {}): Promise<Response> => api(path, { method: 'POST', ...jsonBody(body) });

/* -- files ------------------------------------------------------------------------------------------------------ */

const parentOf = (path: string): string => path.replace(/\/[^/]+\/?$/, '') || '/';
const joinPath = (dir: string, name: string): string => `${dir.replace(/\/$/, '')}/${name}`;
const filesUrl = (id: string, path: string, list = false): string => `${base(id)}/files${list ? '/list' : ''}?path=${encodeURIComponent(path)}`;

async function listFiles(path: string): Promise<void> {
  const id = opened;
  if (id === null) return;
  let entries: FileEntry[];
  try {
    ({ entries } = await json<{ path: string; entries: FileEntry[] }>(filesUrl(id, path, true)));
  } catch (error) {
    say('files-status', errorText(error), 'error');
    return;
  }
  filesPath = path;
  $('files-path').textContent = path;
  $<HTMLButtonElement>('files-up').disabled = path === '/';
  entries.sort((a, b) => Number(b.type === 'dir') - Number(a.type === 'dir') || a.name.localeCompare(b.name));
  const list = entries.map((entry) => {
    const tr = row(['', entry.type, { text: entry.type === 'dir' ? '' : String(entry.size), num: true }, entry.mode, new Date(entry.modifiedAt).toLocaleString(), '']);
    const name = tr.cells[0]!;
    if (entry.type === 'dir') name.append(button(`${entry.name}/`, `Open directory ${entry.name}`, () => void listFiles(entry.path)));
    else name.textContent = entry.name;
    const actions = tr.cells[5]!;
    if (entry.type === 'file') actions.append(button('Download', `Download ${entry.name}`, () => void download(entry)));
    actions.append(button('Delete', `Delete ${entry.name}`, () => void removeFile(entry)));
    return tr;
  });
  fill('files-body', list, 'Empty directory.', 6);
}

async function download(entry: FileEntry): Promise<void> {
  const id = opened;
  if (id === null) return;
  try {
    // A fetch with the key header, then a blob: a plain link could not carry the key.
    const blob = await (await api(filesUrl(id, entry.path))).blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = entry.name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    say('files-status', `Downloaded ${entry.path} (${blob.size} bytes).`, 'ok');
  } catch (error) {
    say('files-status', errorText(error), 'error');
  }
}

async function removeFile(entry: FileEntry): Promise<void> {
  const id = opened;
  if (id === null || !window.confirm(`Delete ${entry.path}${entry.type === 'dir' ? ' and everything in it' : ''}?`)) return;
  try {
    await api(filesUrl(id, entry.path), { method: 'DELETE' });
    say('files-status', `Deleted ${entry.path}.`, 'ok');
  } catch (error) {
    say('files-status', errorText(error), 'error');
  }
  await listFiles(filesPath);
}

async function upload(): Promise<void> {
  const id = opened;
  const input = $<HTMLInputElement>('files-upload');
  const file = input.files?.[0];
  if (id === null) return;
  if (file === undefined) {
    say('files-status', 'Choose a file to upload first.', 'error');
    return;
  }
  const path = joinPath(filesPath, file.name);
  say('files-status', `Uploading ${path}…`);
  try {
    const written = (await (await api(filesUrl(id, path), { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: file })).json()) as { path: string; size: number };
    say('files-status', `Uploaded ${written.path} (${written.size} bytes).`, 'ok');
    input.value = '';
  } catch (error) {
    say('files-status', errorText(error), 'error');
  }
  await listFiles(filesPath);
}

async function downloadTar(): Promise<void> {
  const id = opened;
  if (id === null) return;
  try {
    const blob = await (await api(`${base(id)}/files/tar?path=${encodeURIComponent(filesPath)}`)).blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = `${id}${filesPath.replace(/\//g, '_')}.tar`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    say('files-status', `Downloaded ${filesPath} as a tar archive (${blob.size} bytes).`, 'ok');
  } catch (error) {
    say('files-status', errorText(error), 'error');
  }
}

async function makeFolder(name: string): Promise<void> {
  const id = opened;
  if (id === null) return;
  if (name === '' || name.includes('/')) {
    say('files-status', 'Type a folder name without "/" first.', 'error');
    return;
  }
  const path = joinPath(filesPath, name);
  try {
    await post(`${base(id)}/files/mkdir`, { path });
    say('files-status', `Made ${path}.`, 'ok');
    $<HTMLInputElement>('files-mkdir-name').value = '';
  } catch (error) {
    say('files-status', errorText(error), 'error');
  }
  await listFiles(filesPath);
}

/* -- snapshots -------------------------------------------------------------------------------------------------- */

async function loadSnapshots(): Promise<void> {
  const { snapshots } = await json<{ snapshots: SnapshotView[] }>('/v1/snapshots');
  snapshots.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  const list = snapshots.map((snap) => {
    const tr = row([snap.id, snap.sandboxId, snap.executor, { text: String(snap.bytes), num: true }, snap.memory ? 'files, memory, processes' : 'files', new Date(snap.createdAt).toLocaleString(), '']);
    const actions = tr.cells[6]!;
    actions.append(button('New sandbox', `New sandbox from snapshot ${snap.id}`, () => void fromSnapshot(snap.id)));
    actions.append(button('Delete', `Delete snapshot ${snap.id}`, () => void removeSnapshot(snap.id)));
    return tr;
  });
  fill('snapshots-body', list, 'No snapshots yet: open a sandbox and press Snapshot.', 7);
}

async function fromSnapshot(snapshotId: string): Promise<void> {
  say('snapshots-status', `Creating a sandbox from ${snapshotId}…`);
  try {
    const sb = await json<SandboxView>('/v1/sandboxes', { method: 'POST', ...jsonBody({ fromSnapshot: snapshotId }) });
    await openSandbox(sb.id);
    await loadSandboxes();
    say('snapshots-status', `Created ${sb.id} from ${snapshotId}.`, 'ok');
  } catch (error) {
    say('snapshots-status', errorText(error), 'error');
  }
}

async function removeSnapshot(snapshotId: string): Promise<void> {
  if (!window.confirm(`Delete snapshot ${snapshotId}? Sandboxes made from it keep their files.`)) return;
  try {
    await api(`/v1/snapshots/${encodeURIComponent(snapshotId)}`, { method: 'DELETE' });
    say('snapshots-status', `Deleted ${snapshotId}.`, 'ok');
  } catch (error) {
    say('snapshots-status', errorText(error), 'error');
  }
  await loadSnapshots().catch((error: unknown) => say('snapshots-status', errorText(error), 'error'));
}

/* -- terminal --------------------------------------------------------------------------------------------------- */

async function connectTerminal(): Promise<void> {
  const id = opened;
  if (id === null) return;
  // Asked first over HTTP: a refused WebSocket tells the page nothing, an answer here carries the API's error code.
  try {
    await json(base(id));
  } catch (error) {
    say('terminal-status', errorText(error), 'error');
    return;
  }
  if (terminal === null) {
    const { ConsoleTerminal } = await import('./terminal.js');
    terminal = new ConsoleTerminal($('terminal'), (text, kind) => say('terminal-status', text, kind));
  }
  terminal.connect(id, session.apiKey);
  $('terminal-connect').textContent = 'Reconnect';
}

/* -- wiring ----------------------------------------------------------------------------------------------------- */

$<HTMLFormElement>('sandbox-create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.currentTarget as HTMLFormElement);
  const spec: Record<string, unknown> = { runtime: form.get('runtime') };
  const memory = String(form.get('memoryMb') ?? '').trim();
  if (memory) spec.limits = { memoryMb: Number(memory) };
  say('sandboxes-status', 'Creating a sandbox…');
  try {
    const sb = await json<SandboxView>('/v1/sandboxes', { method: 'POST', ...jsonBody(spec) });
    // Opened before the list reloads: a sandbox open until now that is gone would otherwise be reported over this.
    await openSandbox(sb.id);
    await loadSandboxes();
    say('sandboxes-status', `Created ${sb.id} (${sb.state}).`, 'ok');
  } catch (error) {
    say('sandboxes-status', errorText(error), 'error');
  }
});

$('sandbox-pause').addEventListener('click', () => void act('Pausing', async (id) => `Paused: ${(await ((await post(`${base(id)}/pause`)).json() as Promise<SandboxView>)).state}.`));
$('sandbox-hibernate').addEventListener('click', () =>
  void act('Hibernating', async (id) => {
    const sb = (await (await post(`${base(id)}/hibernate`)).json()) as SandboxView & { hibernation: { processesKept: boolean } | null };
    return `Hibernated: ${sb.state} (${sb.hibernation?.processesKept === true ? 'processes kept' : 'files kept; its processes ended'}).`;
  }),
);
$('sandbox-resume').addEventListener('click', () => void act('Resuming', async (id) => `Resumed: ${(await ((await post(`${base(id)}/resume`)).json() as Promise<SandboxView>)).state}.`));
$('sandbox-snapshot').addEventListener('click', () =>
  void act('Taking a snapshot', async (id) => {
    const snap = (await (await post(`${base(id)}/snapshots`)).json()) as { id: string; bytes: number; memory: boolean };
    return `Snapshot ${snap.id}: ${snap.bytes} bytes of files${snap.memory ? ', memory and processes too' : ' (files only: processes are not kept)'}.`;
  }),
);
$<HTMLFormElement>('sandbox-fork-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const count = Number($<HTMLInputElement>('sandbox-fork-count').value);
  void act(`Forking ${count}`, async (id) => {
    const forked = (await (await post(`${base(id)}/fork`, { count })).json()) as { snapshot: { id: string }; sandboxes: { id: string }[] };
    return `Forked from snapshot ${forked.snapshot.id} into ${forked.sandboxes.map((sb) => sb.id).join(', ')}.`;
  });
});
$('sandbox-delete').addEventListener('click', () => {
  const id = opened;
  if (id === null || !window.confirm(`Delete sandbox ${id}? Its processes and files are gone for good.`)) return;
  void (async () => {
    try {
      await api(base(id), { method: 'DELETE' });
      closeSandbox(`Deleted ${id}.`);
      $('sandboxes-status').className = 'ok';
      await loadSandboxes();
    } catch (error) {
      say('sandbox-status', errorText(error), 'error');
    }
  })();
});
$('sandbox-close').addEventListener('click', () => closeSandbox());
$('terminal-connect').addEventListener('click', () => void connectTerminal());
$('files-up').addEventListener('click', () => void listFiles(parentOf(filesPath)));
$('files-refresh').addEventListener('click', () => void listFiles(filesPath));
$('files-upload-button').addEventListener('click', () => void upload());
$('files-tar').addEventListener('click', () => void downloadTar());
$<HTMLFormElement>('files-mkdir-form').addEventListener('submit', (event) => {
  event.preventDefault();
  void makeFolder($<HTMLInputElement>('files-mkdir-name').value.trim());
});

/** Forgets what the last key saw (the next key may be another tenant's). */
export function resetSandboxes(): void {
  closeSandbox();
  rows.clear();
  $('sandboxes-body').replaceChildren();
  $('files-body').replaceChildren();
  $('snapshots-body').replaceChildren();
  for (const id of ['sandboxes-status', 'sandbox-status', 'sandbox-state', 'files-status', 'files-path', 'terminal-status', 'snapshots-status']) $(id).textContent = '';
  $('terminal-connect').textContent = 'Open terminal';
}
