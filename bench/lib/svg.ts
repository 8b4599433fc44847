/**
 * A small line-chart writer for the bench's results (bench/results/*.svg): axes with ticks, one polyline per series,
 * a legend. Hand-written on purpose: a few dozen lines instead of a charting dependency.
 */
export interface Series {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Logarithmic x axis (concurrency 1..512); needs x > 0. */
  logX?: boolean;
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fmt = (value: number): string => (Math.abs(value) >= 100 ? String(Math.round(value)) : String(Number(value.toPrecision(3))));

export function lineChart(options: ChartOptions): string {
  const width = options.width ?? 640;
  const height = options.height ?? 360;
  const margin = { left: 64, right: 190, top: 36, bottom: 48 };
  const tx = (x: number): number => (options.logX ? Math.log10(x) : x);
  const points = options.series.flatMap((series) => series.points).filter(([x, y]) => Number.isFinite(tx(x)) && Number.isFinite(y));
  const xs = points.map(([x]) => tx(x));
  const ys = points.map(([, y]) => y);
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs) : 1;
  // The y axis spans 0 and every value (a difference such as a memory drop can be negative on a shared host).
  const yMin = ys.length ? Math.min(...ys, 0) * 1.05 : 0;
  const yMax = ys.length ? Math.max(...ys, 0) * 1.05 || 1 : 1;
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const px = (x: number): number => margin.left + (xMax === xMin ? plotW / 2 : ((tx(x) - xMin) / (xMax - xMin)) * plotW);
  const py = (y: number): number => margin.top + plotH - ((y - yMin) / (yMax - yMin)) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escape(options.title)}</text>`,
    `<line x1="${margin.left}" y1="${py(0).toFixed(1)}" x2="${margin.left + plotW}" y2="${py(0).toFixed(1)}" stroke="black"/>`,
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${margin.top + plotH}" stroke="black"/>`,
    `<text x="${margin.left + plotW / 2}" y="${height - 10}" text-anchor="middle">${escape(options.xLabel)}</text>`,
    `<text x="14" y="${margin.top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${margin.top + plotH / 2})">${escape(options.yLabel)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const y = yMin + ((yMax - yMin) * i) / 4;
    out.push(`<line x1="${margin.left - 4}" y1="${py(y).toFixed(1)}" x2="${margin.left}" y2="${py(y).toFixed(1)}" stroke="black"/>`);
    out.push(`<text x="${margin.left - 6}" y="${(py(y) + 4).toFixed(1)}" text-anchor="end">${fmt(y)}</text>`);
  }
  // x ticks at the data's own x values (concurrency steps, N warm) so the reader sees what was measured; with many
  // values (a time series), five evenly spaced ones.
  const distinct = [...new Set(points.map(([x]) => x))].sort((a, b) => a - b);
  const ticks = distinct.length <= 12 || options.logX ? distinct : [0, 1, 2, 3, 4].map((i) => (distinct[0] as number) + (((distinct.at(-1) as number) - (distinct[0] as number)) * i) / 4);
  for (const x of ticks) {
    out.push(`<line x1="${px(x).toFixed(1)}" y1="${margin.top + plotH}" x2="${px(x).toFixed(1)}" y2="${margin.top + plotH + 4}" stroke="black"/>`);
    out.push(`<text x="${px(x).toFixed(1)}" y="${margin.top + plotH + 16}" text-anchor="middle">${fmt(x)}</text>`);
  }
  options.series.forEach((series, index) => {
    const color = COLORS[index % COLORS.length] as string;
    const drawn = series.points.filter(([x, y]) => Number.isFinite(tx(x)) && Number.isFinite(y));
    const path = drawn.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ');
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${path}"/>`);
    for (const [x, y] of drawn) out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = margin.top + 14 + index * 16;
    out.push(`<line x1="${width - margin.right + 10}" y1="${ly - 4}" x2="${width - margin.right + 28}" y2="${ly - 4}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${width - margin.right + 32}" y="${ly}">${escape(series.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
