/** The bench's SVG chart writer (bench/lib/svg.ts): well-formed XML, every point inside the plot, text escaped. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { lineChart } from '../bench/lib/svg.js';

/** A strict enough well-formedness check for what the writer emits: balanced tags, quoted attributes, no bare & or <. */
function assertWellFormed(xml: string): void {
  const stack: string[] = [];
  const token = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)|(<)/g;
  let match: RegExpExecArray | null;
  let seenRoot = false;
  while ((match = token.exec(xml)) !== null) {
    const [, closing, name, , selfClosing, text, bareLt] = match;
    if (bareLt !== undefined) assert.fail(`a bare "<" or a malformed tag at ${match.index}: ${xml.slice(match.index, match.index + 60)}`);
    if (text !== undefined) {
      assert.ok(!/&(?!(amp|lt|gt|quot|apos);)/.test(text), `an unescaped & in text: ${text}`);
      if (stack.length === 0) assert.equal(text.trim(), '', `text outside the root element: ${text}`);
      continue;
    }
    if (closing) {
      assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    } else if (!selfClosing) {
      if (stack.length === 0) {
        assert.ok(!seenRoot, 'more than one root element');
        seenRoot = true;
      }
      stack.push(name as string);
    }
  }
  assert.deepEqual(stack, [], 'unclosed elements');
  assert.ok(seenRoot, 'no root element');
}

const polylines = (svg: string): Array<Array<[number, number]>> =>
  [...svg.matchAll(/<polyline [^>]*points="([^"]*)"/g)].map((match) =>
    (match[1] as string).split(' ').filter(Boolean).map((pair) => pair.split(',').map(Number) as [number, number]),
  );

describe('bench SVG charts', () => {
  it('writes well-formed XML with one polyline per series and escapes text', () => {
    const svg = lineChart({
      title: 'p50 & p99 <latency>',
      xLabel: 'clients',
      yLabel: 'ms',
      logX: true,
      series: [
        { name: 'kindling "p99"', points: [[1, 2], [8, 5], [32, 20], [128, 80], [512, 300]] },
        { name: 'node:http', points: [[1, 0.5], [8, 1], [32, 3], [128, 10], [512, 40]] },
      ],
    });
    assertWellFormed(svg);
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /p50 &amp; p99 &lt;latency&gt;/);
    assert.equal(polylines(svg).length, 2);
  });

  it('puts every point inside the plot area, the largest y at the top and the smallest x at the left', () => {
    const width = 640;
    const height = 360;
    const svg = lineChart({ title: 't', xLabel: 'x', yLabel: 'y', width, height, series: [{ name: 'a', points: [[10, 100], [20, 5000], [400, 2]] }] });
    const [line] = polylines(svg);
    assert.ok(line);
    assert.equal(line.length, 3);
    for (const [x, y] of line) {
      assert.ok(x >= 0 && x <= width, `x ${x} outside 0..${width}`);
      assert.ok(y >= 0 && y <= height, `y ${y} outside 0..${height}`);
    }
    const ys = line.map(([, y]) => y);
    assert.equal(Math.min(...ys), ys[1], 'the largest value is drawn highest');
    const xs = line.map(([x]) => x);
    assert.ok((xs[0] as number) < (xs[1] as number) && (xs[1] as number) < (xs[2] as number), 'x grows to the right');
  });

  it('keeps negative values inside the plot too (a memory drop on a shared host can be below zero)', () => {
    const height = 360;
    const svg = lineChart({ title: 't', xLabel: 'x', yLabel: 'y', height, series: [{ name: 'a', points: [[1, -50], [2, 10], [3, 100]] }] });
    const [line] = polylines(svg);
    for (const [, y] of line ?? []) assert.ok(y >= 0 && y <= height, `y ${y} outside 0..${height}`);
    const ys = (line ?? []).map(([, y]) => y);
    assert.ok((ys[0] as number) > (ys[1] as number) && (ys[1] as number) > (ys[2] as number), 'smaller values are drawn lower');
  });

  it('draws nothing outside the chart for non-finite values and an empty series', () => {
    const svg = lineChart({ title: 't', xLabel: 'x', yLabel: 'y', logX: true, series: [{ name: 'a', points: [[0, 1], [1, Number.NaN], [2, 3]] }, { name: 'empty', points: [] }] });
    assertWellFormed(svg);
    assert.doesNotMatch(svg, /NaN|Infinity/);
    const [line] = polylines(svg);
    assert.equal(line?.length, 1, 'x=0 on a log axis and y=NaN are left out');
  });
});
