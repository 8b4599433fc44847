/**
 * The Kindling console: plain TypeScript on the DOM. Every API call carries the key from the sign-in form as
 * `Authorization: Bearer` (kept in sessionStorage: this tab only; see api.ts). Lists refresh every few seconds.
 */
import './style.css';
import { api, ApiError, json, rememberKey, session } from './api.js';
import { $, fill, row } from './dom.js';
import { loadSandboxes, resetSandboxes } from './sandboxes.js';

const REFRESH_MS = 3000;

let timer: number | undefined;

const time = (ms: number): string => new Date(ms).toLocaleTimeString();
const fmt = (n: number | null, digits = 1): string => (n === null ? '—' : n.toFixed(digits));

/* ---------------------------------------------------------------------------------------------------------------- */

interface FunctionView {
  name: string;
  version: number;
  style: string;
  runtime?: string;
  image?: string;
  executor?: string;
  updatedAtMs: number;
}

let shownFunctions = '';

async function loadFunctions(): Promise<void> {
  const { functions } = await json<{ functions: FunctionView[] }>('/v1/functions');
  // Rebuilt only when something changed: a refresh must not take the keyboard focus off a row's button.
  const shown = JSON.stringify(functions);
  if (shown === shownFunctions) return;
  shownFunctions = shown;
  const rows = functions.map((fn) => {
    const tr = row([fn.name, fn.version, fn.style, fn.runtime ?? fn.image ?? '', fn.executor ?? 'default', time(fn.updatedAtMs)]);
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = 'Follow';
    button.setAttribute('aria-label', `Follow the logs of ${fn.name}`);
    button.addEventListener('click', () => void followLogs(`/v1/functions/${encodeURIComponent(fn.name)}/logs?follow=true&tail=0`, `the logs of ${fn.name}`));
    const td = document.createElement('td');
    td.append(button);
    tr.append(td);
    return tr;
  });
  fill('functions-body', rows, 'No functions yet: deploy one below.', 7);
  const select = $<HTMLSelectElement>('inv-function');
  const current = select.value;
  select.replaceChildren(
    ...functions.map((fn) => {
      const option = document.createElement('option');
      option.value = fn.name;
      option.textContent = `${fn.name} (v${fn.version})`;
      return option;
    }),
  );
  if (functions.some((fn) => fn.name === current)) select.value = current;
}

interface InvocationRecord {
  id: string;
  function: string;
  executor: string;
  atMs: number;
  status: string;
  coldStart: boolean;
  durationMs: number;
  cpuMs: number | null;
  traceId: string | null;
}

async function loadInvocations(): Promise<void> {
  const { invocations } = await json<{ invocations: InvocationRecord[] }>('/v1/usage/invocations?limit=25');
  fill(
    'invocations-body',
    invocations.map((inv) =>
      row([
        inv.id,
        inv.function,
        { text: inv.status, className: `status-${inv.status}` },
        { text: `${fmt(inv.durationMs)} ms`, num: true },
        inv.coldStart ? 'cold' : 'warm',
        inv.executor,
        { text: inv.cpuMs === null ? '—' : `${fmt(inv.cpuMs)} ms`, num: true },
        inv.traceId ? inv.traceId.slice(0, 8) : '—',
        time(inv.atMs),
      ]),
    ),
    'No invocations yet.',
    9,
  );
}

interface PoolsView {
  /** The server's shared warm capacity: only the admin key sees it (it tells about other tenants' load). */
  capacity?: { sandboxes: number; memoryMb: number; maxSandboxes: number; maxMemoryMb: number };
  pools: { function: string; version: number; executor: string; idle: number; busy: number; creating: number; waiting: number }[];
}

async function loadPools(): Promise<void> {
  const view = await json<PoolsView>('/v1/pools');
  const capacity = view.capacity;
  $('pools-capacity').textContent = capacity
    ? `${capacity.sandboxes} of ${capacity.maxSandboxes} warm sandboxes, ${capacity.memoryMb} of ${capacity.maxMemoryMb} MB`
    : "Your tenant's warm pools (the server's total capacity is shown to the admin only).";
  fill('pools-body', view.pools.map((p) => row([p.function, p.version, p.executor, p.idle, p.busy, p.creating, p.waiting])), 'No warm pools (handler-style functions get one on first use).', 7);
}

type ClusterView =
  | { mode: 'single' }
  | { mode: 'cluster'; role: string; nodeId: string; nats: string; workers: { nodeId: string; role: string; capacity: number; inFlight: number; warm: string[]; heartbeatAt: string }[] };

/** The admin's view of the cluster (hidden for tenant keys and on a server on its own). */
let clusterVisible = false;

async function loadCluster(): Promise<void> {
  if (!clusterVisible) return;
  const view = await json<ClusterView>('/v1/cluster');
  const inCluster = view.mode === 'cluster';
  $('cluster').hidden = !inCluster;
  $('cluster-link').hidden = !inCluster;
  if (view.mode !== 'cluster') return;
  $('cluster-node').textContent = `This node: ${view.nodeId} (${view.role}), NATS ${view.nats}.`;
  fill(
    'cluster-body',
    view.workers.map((w) => row([w.nodeId, w.role, { text: String(w.capacity), num: true }, { text: String(w.inFlight), num: true }, w.warm.join(', ') || '—', new Date(w.heartbeatAt).toLocaleTimeString()])),
    view.role === 'worker' ? 'A worker does not watch the other workers: open the console of a gateway.' : 'No worker is registered (start one: kindling serve --cluster URLS --role worker).',
    6,
  );
}

interface ImagesView {
  images: { name: string; image: string; shared: boolean; from: string; apt: string[]; files: { dest: string; bytes: number } | null; status: string; error: string | null; sizeBytes: number | null; finishedAt: string | null }[];
}

async function loadImages(): Promise<void> {
  const view = await json<ImagesView>('/v1/images');
  fill(
    'images-body',
    view.images.map((i) =>
      row([
        `${i.image}${i.shared ? ' (shared)' : ''}`,
        i.from,
        i.apt.join(' ') || '—',
        i.files === null ? '—' : `${i.files.dest} (${i.files.bytes} bytes)`,
        // A failed build says why here; the whole log is GET /v1/images/NAME (kindling images show NAME).
        i.status === 'failed' ? `failed: ${(i.error ?? '').slice(0, 200)}` : i.status,
        { text: i.sizeBytes === null ? '—' : `${(i.sizeBytes / 1048576).toFixed(1)} MiB`, num: true },
        i.finishedAt === null ? '—' : new Date(i.finishedAt).toLocaleString(),
      ]),
    ),
    'No custom images (kindling images create).',
    7,
  );
}

interface UsageView {
  rows: { tenant: string; function: string; invocations: number; cpuMs: number; gbSeconds: number; bytesIn: number; bytesOut: number }[];
}

async function loadUsage(): Promise<void> {
  const view = await json<UsageView>('/v1/usage?groupBy=function');
  fill('usage-body', view.rows.map((r) => row([r.tenant, r.function, r.invocations, { text: fmt(r.cpuMs), num: true }, { text: fmt(r.gbSeconds, 4), num: true }, r.bytesIn, r.bytesOut])), 'Nothing metered yet.', 7);
}

/* ---------------------------------------------------------------------------------------------------------------- */

interface Bucket {
  startMs: number;
  invocations: number;
  coldStarts: number;
  p50Ms: number | null;
  p95Ms: number | null;
  p99Ms: number | null;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#c2410c', '#2563eb', '#7c3aed'];

/** A small line chart as inline SVG: one polyline per series, a max label and the time range. */
function chart(containerId: string, label: string, buckets: Bucket[], series: { name: string; value: (b: Bucket) => number | null }[]): void {
  const width = 360;
  const height = 120;
  const pad = 24;
  const values = buckets.flatMap((b) => series.map((s) => s.value(b) ?? 0));
  const max = Math.max(1, ...values);
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  const latest = buckets.at(-1);
  svg.setAttribute('aria-label', `${label}; latest minute: ${series.map((s) => `${s.name} ${latest ? fmt(s.value(latest), 0) : 0}`).join(', ')}; max ${fmt(max, 0)}`);
  const axis = document.createElementNS(SVG_NS, 'path');
  axis.setAttribute('d', `M${pad},4 V${height - pad} H${width - 4}`);
  axis.setAttribute('stroke', 'currentColor');
  axis.setAttribute('stroke-opacity', '0.4');
  axis.setAttribute('fill', 'none');
  svg.append(axis);
  const x = (i: number): number => pad + (i * (width - pad - 4)) / Math.max(1, buckets.length - 1);
  const y = (v: number): number => height - pad - (v / max) * (height - pad - 8);
  series.forEach((s, index) => {
    const line = document.createElementNS(SVG_NS, 'polyline');
    line.setAttribute('points', buckets.map((b, i) => `${x(i).toFixed(1)},${y(s.value(b) ?? 0).toFixed(1)}`).join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', COLORS[index % COLORS.length]!);
    line.setAttribute('stroke-width', '1.8');
    svg.append(line);
  });
  const text = (content: string, tx: number, ty: number, anchor = 'start'): void => {
    const t = document.createElementNS(SVG_NS, 'text');
    t.textContent = content;
    t.setAttribute('x', String(tx));
    t.setAttribute('y', String(ty));
    t.setAttribute('font-size', '10');
    t.setAttribute('fill', 'currentColor');
    t.setAttribute('text-anchor', anchor);
    svg.append(t);
  };
  text(fmt(max, 0), pad - 3, 12, 'end');
  text('0', pad - 3, height - pad, 'end');
  if (buckets.length > 0) {
    text(time(buckets[0]!.startMs), pad, height - 8);
    text(time(buckets.at(-1)!.startMs), width - 4, height - 8, 'end');
  }
  if (series.length > 1) series.forEach((s, i) => text(s.name, width - 4 - (series.length - 1 - i) * 34, 12, 'end'));
  $(containerId).replaceChildren(svg);
}

async function loadCharts(): Promise<void> {
  const { buckets } = await json<{ buckets: Bucket[] }>('/v1/usage/timeseries?minutes=30&bucketSeconds=60');
  chart('chart-rate', 'Invocations per minute', buckets, [{ name: 'rate', value: (b) => b.invocations }]);
  chart('chart-latency', 'Latency percentiles in ms', buckets, [
    { name: 'p50', value: (b) => b.p50Ms },
    { name: 'p95', value: (b) => b.p95Ms },
    { name: 'p99', value: (b) => b.p99Ms },
  ]);
  chart('chart-cold', 'Cold starts per minute', buckets, [{ name: 'cold', value: (b) => b.coldStarts }]);
}

/* ---------------------------------------------------------------------------------------------------------------- */

interface SseEvent {
  event: string;
  data: string;
}

/** Server-Sent Events from a fetch body (EventSource cannot send the Authorization header). */
async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Line ends may be CRLF, CR or LF; a CR at the end of a chunk waits for the next one (it may be half of a CRLF).
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n|\r(?!$)/g, '\n');
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
        if (data.length > 0) yield { event, data: data.join('\n') };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

interface EndView {
  id?: string;
  invocationId?: string;
  status: string;
  exitCode?: number | null;
  durationMs?: number | null;
}

let following: AbortController | null = null;

function appendLog(text: string, className?: string): void {
  const output = $('logs-output');
  const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
  const span = document.createElement('span');
  span.textContent = text;
  if (className) span.className = className;
  output.append(span);
  if (atBottom) output.scrollTop = output.scrollHeight;
}

/**
 * Opens the live log panel on an SSE path (`/v1/invocations/ID/logs` or `/v1/functions/NAME/logs?follow=true`):
 * stdout and stderr lines appear as the function prints them. One stream at a time; resolves with the `end` event of a
 * single invocation's stream (null for a function's stream, or when stopped).
 */
async function followLogs(path: string, what: string, options: { focus?: boolean } = {}): Promise<EndView | null> {
  following?.abort();
  const abort = new AbortController();
  following = abort;
  const status = $('logs-status');
  const stop = $<HTMLButtonElement>('logs-stop');
  $('logs-output').replaceChildren();
  status.className = '';
  status.textContent = `Connecting to ${what}…`;
  stop.disabled = false;
  if (options.focus !== false) $('logs-output').focus();
  const single = path.startsWith('/v1/invocations/');
  let ended: EndView | null = null;
  try {
    const response = await api(path, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
    if (!response.body) throw new Error('the response has no body');
    status.textContent = `Following ${what} live (Escape or “Stop following” stops).`;
    for await (const { event, data } of sseEvents(response.body)) {
      const message = JSON.parse(data) as { invocationId?: string; text?: string } & EndView;
      if (event === 'stdout' || event === 'stderr') appendLog(message.text ?? '', event === 'stderr' ? 'stderr' : undefined);
      else if (event === 'start' && !single) appendLog(`— ${message.invocationId} started —\n`, 'marker');
      else if (event === 'end') {
        if (single) ended = message;
        else appendLog(`— ${message.invocationId} ${message.status} —\n`, 'marker');
      }
    }
    status.className = ended === null || ended.status === 'succeeded' ? 'ok' : 'error';
    status.textContent = ended === null ? `The stream of ${what} ended.` : `Finished: ${what} ${ended.status}, exit code ${ended.exitCode ?? '?'}, ${ended.durationMs ?? '?'} ms.`;
  } catch (error) {
    if (abort.signal.aborted) {
      if (following === abort || following === null) status.textContent = `Stopped following ${what}.`;
    } else {
      status.className = 'error';
      status.textContent = error instanceof Error ? error.message : String(error);
    }
  } finally {
    if (following === abort) {
      following = null;
      stop.disabled = true;
    }
  }
  return ended;
}

function stopFollowing(): void {
  const current = following;
  following = null;
  current?.abort();
  $<HTMLButtonElement>('logs-stop').disabled = true;
}

$('logs-stop').addEventListener('click', () => {
  stopFollowing();
  $('logs-output').focus();
});
$('logs-output').addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && following !== null) stopFollowing();
});

async function refresh(): Promise<void> {
  const results = await Promise.allSettled([loadFunctions(), loadInvocations(), loadSandboxes(), loadPools(), loadCluster(), loadImages(), loadUsage(), loadCharts()]);
  for (const result of results) if (result.status === 'rejected' && !(result.reason instanceof ApiError && result.reason.status === 401)) console.warn(result.reason);
}

/* ---------------------------------------------------------------------------------------------------------------- */

/** Shows which tenant the key belongs to (a tenant key sees only its own tenant's things everywhere below). */
async function loadWhoami(): Promise<void> {
  const me = await json<{ name: string; admin: boolean }>('/v1/tenant');
  $('whoami').textContent = `Tenant ${me.name}${me.admin ? ' (admin)' : ''}`;
  clusterVisible = me.admin;
  await loadCluster();
}

function showApp(): void {
  $('login').hidden = true;
  $('app').hidden = false;
  $('nav').hidden = false;
  void loadWhoami().catch(() => undefined);
  void refresh();
  window.clearInterval(timer);
  timer = window.setInterval(() => void refresh(), REFRESH_MS);
}

/** What the last key saw stays nowhere on the page: the next key may be another tenant's. */
const SESSION_TEXT_IDS = ['whoami', 'deploy-status', 'invoke-meta', 'invoke-output', 'logs-status', 'logs-output', 'functions-body', 'invocations-body', 'pools-body', 'pools-capacity', 'cluster-node', 'cluster-body', 'images-body', 'usage-body'];

function signOut(message = ''): void {
  stopFollowing();
  shownFunctions = '';
  rememberKey(null);
  resetSandboxes();
  clusterVisible = false;
  $('cluster').hidden = true;
  $('cluster-link').hidden = true;
  for (const id of SESSION_TEXT_IDS) $(id).textContent = '';
  $<HTMLSelectElement>('inv-function').replaceChildren();
  $<HTMLFormElement>('deploy-form').reset();
  $<HTMLFormElement>('invoke-form').reset();
  for (const id of ['chart-rate', 'chart-latency', 'chart-cold']) $(id).replaceChildren();
  window.clearInterval(timer);
  $('app').hidden = true;
  $('nav').hidden = true;
  $('login').hidden = false;
  $('login-status').textContent = message;
  $<HTMLInputElement>('api-key').focus();
}

$<HTMLFormElement>('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>('api-key');
  session.apiKey = input.value.trim() || null;
  $('login-status').textContent = '';
  try {
    await api('/v1/functions');
  } catch (error) {
    $('login-status').textContent = error instanceof Error ? error.message : String(error);
    return;
  }
  rememberKey(session.apiKey);
  input.value = '';
  showApp();
  $('functions-title').focus();
});

$('logout').addEventListener('click', () => signOut());

$<HTMLFormElement>('deploy-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.currentTarget as HTMLFormElement);
  const name = String(form.get('name') ?? '').trim();
  const spec: Record<string, unknown> = { runtime: form.get('runtime'), code: form.get('code') };
  const handler = String(form.get('handler') ?? '').trim();
  if (handler) spec.handler = handler;
  const memory = String(form.get('memoryMb') ?? '').trim();
  if (memory) spec.memoryMb = Number(memory);
  const status = $('deploy-status');
  status.className = '';
  status.textContent = `Deploying ${name}…`;
  try {
    const view = await json<FunctionView>(`/v1/functions/${encodeURIComponent(name)}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    status.className = 'ok';
    status.textContent = `Deployed ${view.name} version ${view.version}.`;
    await loadFunctions();
    $<HTMLSelectElement>('inv-function').value = view.name;
  } catch (error) {
    status.className = 'error';
    status.textContent = error instanceof Error ? error.message : String(error);
  }
});

// Tab in the code editor indents instead of leaving the field; Escape then Tab leaves it (keyboard users stay free).
let escaped = false;
$<HTMLTextAreaElement>('fn-code').addEventListener('keydown', (event) => {
  const area = event.currentTarget as HTMLTextAreaElement;
  if (event.key === 'Escape') {
    escaped = true;
    return;
  }
  if (event.key === 'Tab' && !event.shiftKey && !escaped) {
    event.preventDefault();
    area.setRangeText('    ', area.selectionStart, area.selectionEnd, 'end');
  }
  escaped = false;
});

$<HTMLFormElement>('invoke-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.currentTarget as HTMLFormElement);
  const name = String(form.get('function') ?? '');
  const meta = $('invoke-meta');
  const output = $('invoke-output');
  meta.className = '';
  meta.textContent = `Invoking ${name}…`;
  output.textContent = '';
  if (form.get('async') === 'on') {
    await invokeAsync(name, String(form.get('payload') ?? ''));
    return;
  }
  try {
    const response = await api(`/v1/functions/${encodeURIComponent(name)}/invoke`, { method: 'POST', body: String(form.get('payload') ?? '') });
    output.textContent = await response.text();
    const h = (header: string): string => response.headers.get(`x-kindling-${header}`) ?? '?';
    meta.className = h('exit-code') === '0' ? 'ok' : 'error';
    meta.textContent = `Invocation ${h('invocation-id')}: exit code ${h('exit-code')}, ${h('duration-ms')} ms, ${h('cold-start') === 'true' ? 'cold' : 'warm'} start on ${h('executor')}`;
    void refresh();
  } catch (error) {
    meta.className = 'error';
    meta.textContent = error instanceof Error ? error.message : String(error);
  }
});

/** Starts an async invocation (202 with its id) and follows its logs in the live panel; then shows its output. */
async function invokeAsync(name: string, payload: string): Promise<void> {
  const meta = $('invoke-meta');
  const output = $('invoke-output');
  let id: string;
  try {
    const response = await api(`/v1/functions/${encodeURIComponent(name)}/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true' }, body: payload });
    id = ((await response.json()) as { invocationId: string }).invocationId;
  } catch (error) {
    meta.className = 'error';
    meta.textContent = error instanceof Error ? error.message : String(error);
    return;
  }
  meta.textContent = `Invocation ${id} is running: its logs follow under Live logs.`;
  const ended = await followLogs(`/v1/invocations/${encodeURIComponent(id)}/logs`, `invocation ${id}`, { focus: false });
  if (ended === null) return;
  meta.className = ended.exitCode === 0 ? 'ok' : 'error';
  meta.textContent = `Invocation ${id}: ${ended.status}, exit code ${ended.exitCode ?? '?'}, ${ended.durationMs ?? '?'} ms`;
  try {
    output.textContent = await (await api(`/v1/invocations/${encodeURIComponent(id)}/output`)).text();
  } catch (error) {
    output.textContent = error instanceof Error ? error.message : String(error);
  }
  void refresh();
}

$('usage-csv').addEventListener('click', async () => {
  const response = await api('/v1/usage?groupBy=function', { headers: { accept: 'text/csv' } });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement('a');
  link.href = url;
  link.download = 'kindling-usage.csv';
  link.click();
  URL.revokeObjectURL(url);
});

$('functions-title').tabIndex = -1;
session.onUnauthorized = (message) => signOut(message);
if (session.apiKey !== null) showApp();
else $<HTMLInputElement>('api-key').focus();
