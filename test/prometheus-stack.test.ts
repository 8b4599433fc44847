/**
 * The shipped observability stack (deploy/prometheus, deploy/grafana) against the real tools: promtool checks the
 * scrape config and the alert rules and runs their unit tests; Debian's Prometheus scrapes a real server (sandbox
 * executor) with the shipped config, reads kindling_invocations_total back through its query API, loads and evaluates
 * the alert rules, and evaluates every expression of the Grafana dashboard.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Metrics } from '../src/metrics/metrics.js';
import { PROMTOOL, prometheusUnavailableReason, startPrometheus, type RunningPrometheus } from './helpers/prometheus.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const run = promisify(execFile);
const repo = (path: string): string => fileURLToPath(new URL(`../../${path}`, import.meta.url));
const PROMETHEUS_DIR = repo('deploy/prometheus');
const DASHBOARD = repo('deploy/grafana/kindling-dashboard.json');
const missingTools = prometheusUnavailableReason();
const unavailable = missingTools ?? (await sandboxUnavailableReason());
const KEY = 'test-admin-key-prometheus';
const SCRAPE_TOKEN = 'test-scrape-token-prometheus';
const NODE = 'prom-node-1';

/** Runs promtool; its output (stdout and stderr) whether it passed or not, and whether it did. */
async function promtool(args: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await run(PROMTOOL, args, { cwd: PROMETHEUS_DIR });
    return { ok: true, output: stdout + stderr };
  } catch (error) {
    const failed = error as { stdout?: string; stderr?: string; message: string };
    return { ok: false, output: `${failed.stdout ?? ''}${failed.stderr ?? ''}${failed.message}` };
  }
}

/** Replaces `from` (which must occur exactly once, or the shipped file changed under the test) with `to`. */
function replaceOnce(text: string, from: string, to: string): string {
  const parts = text.split(from);
  assert.equal(parts.length, 2, `deploy/prometheus/prometheus.yml should contain "${from}" once`);
  return parts.join(to);
}

/**
 * The shipped prometheus.yml and alerts.yml copied into `dir`, with only what a deployment changes: the token file,
 * and (for a test run) the target and 1 s intervals.
 */
async function deployedConfig(dir: string, changes: { target?: string; fast?: boolean } = {}): Promise<string> {
  const tokenFile = join(dir, 'kindling-metrics-token');
  await writeFile(tokenFile, `${SCRAPE_TOKEN}\n`, { mode: 0o600 });
  let config = await readFile(join(PROMETHEUS_DIR, 'prometheus.yml'), 'utf8');
  config = replaceOnce(config, 'credentials_file: /etc/prometheus/kindling-metrics-token', `credentials_file: ${tokenFile}`);
  if (changes.target !== undefined) config = replaceOnce(config, '- targets: ["127.0.0.1:8080"]', `- targets: ["${changes.target}"]`);
  if (changes.fast) {
    config = replaceOnce(config, 'scrape_interval: 15s', 'scrape_interval: 1s');
    config = replaceOnce(config, 'evaluation_interval: 15s', 'evaluation_interval: 1s');
  }
  const file = join(dir, 'prometheus.yml');
  await writeFile(file, config);
  await copyFile(join(PROMETHEUS_DIR, 'alerts.yml'), join(dir, 'alerts.yml'));
  return file;
}

/** Every kindling_* name a text mentions. */
const kindlingNames = (text: string): string[] => [...new Set(text.match(/\bkindling_[a-z0-9_]+/g) ?? [])].sort();

interface Dashboard {
  schemaVersion: number;
  templating: { list: { name: string; type: string; query: string | { query: string } }[] };
  panels: { type: string; title: string; datasource?: { uid: string }; targets?: { expr: string; datasource?: { uid: string } }[] }[];
}

/** A dashboard expression as Grafana would send it with "All" nodes selected. */
const resolved = (expr: string): string => expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', 'kindling').replaceAll('$node', '.*');

describe('the shipped Prometheus config and alert rules (promtool)', { skip: missingTools ?? false }, () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kindling-promtool-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('promtool check config passes on prometheus.yml as shipped (syntax) and as deployed with a token file (with its rules)', async () => {
    const syntax = await promtool(['check', 'config', '--syntax-only', 'prometheus.yml']);
    assert.ok(syntax.ok, syntax.output);
    const full = await promtool(['check', 'config', await deployedConfig(dir)]);
    assert.ok(full.ok, full.output);
    assert.match(full.output, /SUCCESS: 13 rules found/);
  });

  it('promtool check rules passes on alerts.yml', async () => {
    const result = await promtool(['check', 'rules', 'alerts.yml']);
    assert.ok(result.ok, result.output);
    assert.match(result.output, /SUCCESS: 13 rules found/);
  });

  it('promtool test rules: every alert fires on a sick series and stays quiet on a healthy one', async () => {
    const result = await promtool(['test', 'rules', 'alerts.test.yml']);
    assert.ok(result.ok, result.output);
    // Each alert is exercised by the tests.
    const tests = await readFile(join(PROMETHEUS_DIR, 'alerts.test.yml'), 'utf8');
    const rules = await readFile(join(PROMETHEUS_DIR, 'alerts.yml'), 'utf8');
    const alerts = [...rules.matchAll(/- alert: (\w+)/g)].map((m) => m[1]!);
    assert.equal(alerts.length, 13);
    for (const alert of alerts) assert.match(tests, new RegExp(`alertname: ${alert}\\n(?:.*\\n){1,2}\\s+- exp_labels`), `no test expects ${alert} to fire`);
  });
});

describe('Prometheus scraping a real server with the shipped config', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let prometheus: RunningPrometheus | undefined;
  let dir: string;
  const auth = { authorization: `Bearer ${KEY}` };
  const exported = async (): Promise<string> => {
    const response = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${SCRAPE_TOKEN}` } });
    assert.equal(response.status, 200);
    return response.text();
  };

  const invoke = async (name: string): Promise<void> => {
    const response = await fetch(`${server.url}/v1/functions/${name}/invoke`, { method: 'POST', headers: auth });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), 'hi\n');
  };
  /** Deploys a command function of its own and invokes it `times` times (each answers 200 "hi"). */
  const deployAndInvoke = async (name: string, times: number): Promise<void> => {
    const deploy = await fetch(`${server.url}/v1/functions/${name}`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'bash', code: 'echo hi' }) });
    assert.ok(deploy.ok, await deploy.text());
    for (let i = 0; i < times; i++) await invoke(name);
  };

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY, metricsToken: SCRAPE_TOKEN, nodeName: NODE });
    dir = await mkdtemp(join(tmpdir(), 'kindling-prometheus-'));
    const config = await deployedConfig(dir, { target: new URL(server.url).host, fast: true });
    prometheus = await startPrometheus(config, dir);
  });
  after(async () => {
    await prometheus?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    await server?.stop();
  });

  it('reads kindling_invocations_total back through the query API, with the node and tenant labels', async () => {
    const INVOCATIONS = 3;
    await deployAndInvoke('prom-hello', INVOCATIONS);
    const query = 'kindling_invocations_total{job="kindling", function="prom-hello"}';
    let last = '';
    await waitFor(async () => {
      const samples = await prometheus!.query(`sum(${query})`);
      last = JSON.stringify(samples);
      return samples.length === 1 && Number(samples[0]!.value[1]) === INVOCATIONS;
    }, 60_000, `Prometheus to count ${INVOCATIONS} invocations (last answer ${last}; its log: ${prometheus!.log().slice(-1500)})`);
    const [series, ...others] = await prometheus!.query(query);
    assert.deepEqual(others, []);
    assert.equal(series!.metric.node, NODE);
    assert.equal(series!.metric.tenant, 'default');
    assert.equal(series!.metric.status, 'succeeded');
    assert.equal(series!.metric.instance, new URL(server.url).host);
    // The target is up: the scrape token from the credentials file was accepted.
    const up = await prometheus!.query('up{job="kindling"}');
    assert.deepEqual(up.map((sample) => sample.value[1]), ['1']);
    // The data dir gauges of this server's filesystem arrive too.
    const free = await prometheus!.query(`kindling_data_dir_free_bytes{node="${NODE}"} / kindling_data_dir_size_bytes{node="${NODE}"}`);
    assert.equal(free.length, 1);
    assert.ok(Number(free[0]!.value[1]) > 0 && Number(free[0]!.value[1]) <= 1, JSON.stringify(free));
  });

  it('loads the alert rules, evaluates every one without error, and the server-lost alerts stay quiet', async () => {
    interface Rule { name: string; health: string; lastError?: string; lastEvaluation: string; labels: Record<string, string>; annotations: Record<string, string>; state: string }
    const rules = async (): Promise<Rule[]> => (await prometheus!.api<{ groups: { rules: Rule[] }[] }>('rules?type=alert')).groups.flatMap((group) => group.rules);
    // Evaluated at least once since this server's series exist (1 s evaluation interval).
    await waitFor(async () => {
      const list = await rules();
      return list.length === 13 && list.every((rule) => rule.health !== 'unknown' && !rule.lastEvaluation.startsWith('0001'));
    }, 60_000, 'every alert rule to be evaluated');
    const docs = await readFile(repo('docs/metrics.md'), 'utf8');
    for (const rule of await rules()) {
      assert.equal(rule.health, 'ok', `${rule.name}: ${rule.lastError}`);
      assert.ok(['warning', 'critical'].includes(rule.labels.severity ?? ''), `${rule.name} has severity ${rule.labels.severity}`);
      for (const field of ['summary', 'description', 'runbook']) assert.ok(rule.annotations[field], `${rule.name} has no ${field}`);
      // The runbook is a section of docs/metrics.md saying what to do.
      assert.equal(rule.annotations.runbook, `docs/metrics.md#${rule.name.toLowerCase()}`);
      assert.ok(new RegExp(`^#### ${rule.name}$`, 'm').test(docs), `docs/metrics.md has no section "#### ${rule.name}"`);
    }
    // A rule evaluated before the first scrape may be pending (absent); once the target is up, the server-lost rules
    // must be quiet.
    await waitFor(async () => (await prometheus!.query('up{job="kindling"} == 1')).length === 1, 60_000, 'the target to be up');
    let states = '';
    await waitFor(async () => {
      const list = await rules();
      states = list.map((rule) => `${rule.name}=${rule.state}`).join(', ');
      return ['KindlingDown', 'KindlingAbsent'].every((name) => list.find((rule) => rule.name === name)?.state === 'inactive');
    }, 60_000, `KindlingDown and KindlingAbsent to be inactive (${states})`);
  });

  it('every Grafana dashboard expression evaluates, names only metrics the server exports, and the main panels show data', async () => {
    const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as Dashboard;
    assert.ok(dashboard.schemaVersion >= 36, `schemaVersion ${dashboard.schemaVersion}`);
    const variables = new Map(dashboard.templating.list.map((variable) => [variable.name, variable]));
    assert.equal(variables.get('datasource')?.type, 'datasource');
    assert.equal(variables.get('node')?.type, 'query');
    const targets = dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ panel: panel.title, ...target })));
    assert.ok(targets.length >= 20, `${targets.length} expressions`);
    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) assert.equal(panel.datasource?.uid, '${datasource}', `${panel.title} uses the templated datasource`);

    // label_values(<selector>, <label>) of the variables is Grafana's; its selector must be valid PromQL.
    const variableSelectors = [...variables.values()].flatMap((variable) => {
      const query = typeof variable.query === 'string' ? variable.query : variable.query.query;
      const match = /^label_values\((.+), (\w+)\)$/.exec(query);
      return match ? [match[1]!] : [];
    });
    assert.equal(variableSelectors.length, 2);
    for (const expr of [...targets.map((target) => target.expr), ...variableSelectors]) {
      await assert.doesNotReject(prometheus!.query(resolved(expr)), `expression refused: ${expr}`);
    }

    // Names: the metric families of /metrics (HELP/TYPE lines even without series yet), with a histogram's series.
    const text = await exported();
    const families = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
    const known = new Set([...families].flatMap(([name, type]) => (type === 'histogram' ? [name, `${name}_bucket`, `${name}_sum`, `${name}_count`] : [name])));
    const alerts = await readFile(join(PROMETHEUS_DIR, 'alerts.yml'), 'utf8');
    const named = kindlingNames(targets.map((target) => target.expr).join('\n') + variableSelectors.join('\n') + alerts);
    assert.ok(named.length >= 20, named.join(', '));
    // A server on its own exports no cluster series (their alerts stay silent for it): those names come from a cluster node's metrics.
    const clusterNames = new Set((await new Metrics({ collectProcess: false, cluster: () => ({ connected: true, workers: 1 }) }).registry.getMetricsAsJSON()).map((metric) => metric.name).filter((name) => name.startsWith('kindling_cluster_')));
    assert.equal(clusterNames.size, 3);
    assert.deepEqual(named.filter((name) => !known.has(name) && !clusterNames.has(name)), [], 'names the dashboard or alerts use that the server does not export');

    // The invocations panel shows this server's invocations. A rate needs the counter to rise between two scrapes: a
    // call after Prometheus has the series.
    await deployAndInvoke('prom-dashboard', 1);
    await waitFor(async () => (await prometheus!.query('kindling_invocations_total{function="prom-dashboard"}')).length === 1, 60_000, 'Prometheus to have the series of prom-dashboard');
    await invoke('prom-dashboard');
    const outcome = targets.find((target) => target.panel === 'Invocations / s by outcome')!;
    await waitFor(async () => (await prometheus!.query(resolved(outcome.expr))).some((sample) => sample.metric.status === 'succeeded' && Number(sample.value[1]) > 0), 60_000, 'the invocations panel to show data');
    const tenants = targets.find((target) => target.panel === 'Top tenants by invocations / s')!;
    assert.ok((await prometheus!.query(resolved(tenants.expr))).some((sample) => sample.metric.tenant === 'default'));
  });
});
