/**
 * Reading samples out of Prometheus text (GET /metrics) by name and a subset of labels, so that labels a test does not
 * care about (the server's `node` label, other functions' series) neither break nor fake a match.
 */

/** The values of every series of `name` whose labels include `labels`. */
export function series(text: string, name: string, labels: Record<string, string> = {}): number[] {
  const values: number[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.startsWith(`${name}{`) ? line.slice(name.length + 1, line.lastIndexOf('}')) : '';
    const have = Object.fromEntries([...labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) values.push(Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return values;
}

/** The sum of those values (0 when there is none). */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  return series(text, name, labels).reduce((sum, value) => sum + value, 0);
}
