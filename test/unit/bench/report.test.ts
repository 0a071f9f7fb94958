// The benchmark suite's report: the SVG chart is well-formed and draws every value, tables
// line up, and the printed result names every goal and whether it was met.
import t from 'tap';
import { printResult, svg, textTable } from '../../../bench/lib/report';
import type { ScenarioResult } from '../../../bench/lib/types';

t.test('svg: one bar per value, escaped text, balanced tags', async (t) => {
  const out = svg('Ingest <throughput> & more', [
    { title: 'req/s', unit: 'req/s', series: [{ name: 'crowd', points: [{ x: '16', y: 1000 }, { x: '256', y: 30000 }] }, { name: 'no-op', points: [{ x: '16', y: 2000 }, { x: '256', y: 60000 }] }] },
    { title: 'p99', unit: 'ms', series: [{ name: 'crowd', points: [{ x: '256', y: 12.5 }] }] },
  ]);
  t.match(out, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(out, /Ingest &lt;throughput&gt; &amp; more/);
  t.equal((out.match(/<title>/g) ?? []).length, 5, 'five bars, each with its value as a tooltip');
  t.match(out, /<title>crowd @ 256: 30000<\/title>/);
  // Every opened element is closed (self-closing or with its end tag).
  const opened = (out.match(/<(svg|text|title|rect|line)[\s>]/g) ?? []).length;
  const closed = (out.match(/<\/(svg|text|title|rect|line)>|\/>/g) ?? []).length;
  t.equal(opened, closed, 'tags balance');
  t.notMatch(out, /NaN|undefined|Infinity/);
  t.notMatch(svg('empty', [{ title: 'nothing', unit: 'x', series: [] }]), /NaN|Infinity/, 'an empty chart draws no NaN');
});

t.test('textTable and printResult', async (t) => {
  t.equal(textTable([['a', 'bb'], ['ccc', 'd']]), 'a     bb\nccc    d');
  const r: ScenarioResult = {
    scenario: 'x',
    title: 'X',
    method: 'how',
    params: {},
    table: [['system', 'req/s'], ['crowd', '10']],
    goals: [
      { name: 'fast', target: '>= 1 x', measured: '1.2 x', met: true },
      { name: 'faster', target: '>= 2 x', measured: '1.2 x', met: false, note: 'two cores' },
    ],
    charts: [],
    data: null,
  };
  const text = printResult(r);
  t.match(text, /MET\s+fast: 1\.2 x \(goal >= 1 x\)/);
  t.match(text, /NOT MET faster: 1\.2 x \(goal >= 2 x\) — two cores/);
});
