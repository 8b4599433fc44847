/** One line of the results table. Figures are pre-formatted; the JSON keeps the numbers and every sample. */
export type RowStatus = 'pass' | 'fail' | 'info' | 'skipped' | 'error';

export interface Row {
  group: 'docker' | 'sandbox' | 'sandboxes' | 'sandbox-files' | 'functions' | 'async' | 'microvm' | 'python' | 'gvisor' | 'bundles' | 'operator' | 'density' | 'burst' | 'throughput' | 'cluster';
  id: string;
  scenario: string;
  kindling: string;
  baseline: string;
  ratio: string;
  target: string;
  status: RowStatus;
  /** Extra facts worth reading next to the figure (prewarm hits, byte-exactness, reasons). */
  note?: string;
}

const STATUS_LABEL: Record<RowStatus, string> = {
  pass: 'PASS',
  fail: 'FAIL',
  info: 'info',
  skipped: 'skipped',
  error: 'ERROR',
};

const escapeCell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** A GitHub-flavoured markdown table, padded so it also reads well in a terminal. */
export function markdownTable(headers: string[], rows: string[][]): string {
  const cells = [headers, ...rows].map((row) => row.map(escapeCell));
  const widths = headers.map((_, column) => Math.max(3, ...cells.map((row) => (row[column] ?? '').length)));
  const line = (row: string[]): string => `| ${widths.map((width, column) => (row[column] ?? '').padEnd(width)).join(' | ')} |`;
  const separator = `|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`;
  const [head, ...body] = cells;
  return [line(head as string[]), separator, ...body.map(line)].join('\n');
}

export function rowsTable(rows: Row[]): string {
  return markdownTable(
    ['Scenario', 'Kindling', 'Baseline (same run)', 'Ratio', 'Target', 'Result', 'Notes'],
    rows.map((row) => [row.scenario, row.kindling, row.baseline, row.ratio, row.target, STATUS_LABEL[row.status], row.note ?? '']),
  );
}

export function skippedRow(group: Row['group'], id: string, scenario: string, target: string, reason: string): Row {
  return { group, id, scenario, kindling: `skipped: ${reason}`, baseline: '—', ratio: '—', target, status: 'skipped' };
}
