/**
 * What the suite writes: bench/results/<scenario>.json (machine, Node, git commit, date, every
 * figure), bench/results/<scenario>.svg (its charts), bench/results/summary.md (every
 * scenario's table and goals), and the table on stdout.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { ROOT, git } from './proc';
import type { Chart, ScenarioResult } from './types';

export const RESULTS_DIR = join(ROOT, 'bench', 'results');

function osName(): string | null {
  try {
    return /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

export function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu_model: cpus[0]?.model ?? null,
    cpu_count: cpus.length,
    total_memory_bytes: os.totalmem(),
    os: osName(),
    kernel: `${os.type()} ${os.release()}`,
    arch: os.arch(),
    loadavg: os.loadavg(),
  };
}

export function provenance(): Record<string, unknown> {
  let crowdVersion: string | null = null;
  try {
    crowdVersion = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    crowdVersion = null;
  }
  return {
    date: new Date().toISOString(),
    git: { commit: git(['rev-parse', 'HEAD']), dirty: (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '' },
    node: process.version,
    crowd_version: crowdVersion,
    machine: machine(),
  };
}

export function textTable(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('   ')).join('\n');
}

function mdTable(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '';
  const esc = (c: string) => c.replace(/\|/g, '\\|');
  return [`| ${rows[0]!.map(esc).join(' | ')} |`, `|${rows[0]!.map(() => '---').join('|')}|`, ...rows.slice(1).map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

export function printResult(r: ScenarioResult): string {
  const goals = r.goals.map((g) => `  ${g.met ? 'MET  ' : 'NOT MET'} ${g.name}: ${g.measured} (goal ${g.target})${g.note ? ` — ${g.note}` : ''}`);
  const more = (r.tables ?? []).flatMap((t) => [`${t.title}:`, textTable(t.table), '']);
  return [`== ${r.scenario}: ${r.title}`, r.method, '', textTable(r.table), '', ...more, ...(goals.length ? ['goals:', ...goals] : [])].join('\n');
}

export function writeScenario(r: ScenarioResult, full: boolean): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(join(RESULTS_DIR, `${r.scenario}.json`), JSON.stringify({ benchmark: r.scenario, mode: full ? 'full' : 'quick', ...provenance(), title: r.title, method: r.method, params: r.params, table: r.table, ...(r.tables ? { tables: r.tables } : {}), goals: r.goals, data: r.data }, null, 2) + '\n');
  if (r.charts.length > 0) writeFileSync(join(RESULTS_DIR, `${r.scenario}.svg`), svg(r.title, r.charts));
}

/** The Markdown summary of a suite run (all scenarios that ran, in order). */
export function writeSummary(results: readonly ScenarioResult[], full: boolean, command: string): string {
  const p = provenance();
  const m = p.machine as { cpu_model: string; cpu_count: number; os: string };
  const lines = [
    '# crowd benchmark results',
    '',
    `Latest run: \`${command}\` (${full ? 'full' : 'quick'} mode), ${p.date as string}, commit ${((p.git as { commit: string }).commit ?? 'unknown').slice(0, 12)}, Node ${p.node as string}, ${m.cpu_count} x ${m.cpu_model}, ${m.os}.`,
    `Figures on a shared ${m.cpu_count}-core machine drift from run to run; compare the ratios, which are measured in one run.`,
    '',
    '## Goals',
    '',
    mdTable([['scenario', 'goal', 'target', 'measured', 'met'], ...results.flatMap((r) => r.goals.map((g) => [r.scenario, g.name, g.target, g.measured, g.met ? 'yes' : `**no**${g.note ? `: ${g.note}` : ''}`]))]),
    '',
  ];
  for (const r of results) {
    lines.push(`## ${r.scenario}: ${r.title}`, '', r.method, '', mdTable(r.table), '');
    for (const t of r.tables ?? []) lines.push(`${t.title}:`, '', mdTable(t.table), '');
    if (r.charts.length > 0) lines.push(`![${r.scenario}](${r.scenario}.svg)`, '');
  }
  const text = lines.join('\n');
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(join(RESULTS_DIR, 'summary.md'), text);
  return text;
}

// ---------------------------------------------------------------------------------------------
// SVG: grouped bar charts, one panel per chart, no dependencies.

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#9c755f'];
const PANEL_W = 640;
const PANEL_H = 300;

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(v >= 1e7 ? 0 : 1)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (v >= 10) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1);
  return v.toFixed(2);
}

function panel(c: Chart, top: number): string {
  const left = 70;
  const right = 20;
  const plotTop = top + 40;
  const plotH = PANEL_H - 100;
  const plotW = PANEL_W - left - right;
  const xs = [...new Set(c.series.flatMap((s) => s.points.map((p) => p.x)))];
  const max = niceMax(Math.max(0, ...c.series.flatMap((s) => s.points.map((p) => p.y))));
  const out: string[] = [];
  out.push(`<text x="${PANEL_W / 2}" y="${top + 22}" text-anchor="middle" font-size="15" font-weight="bold">${xmlEscape(c.title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = plotTop + plotH - (plotH * i) / 4;
    out.push(`<line x1="${left}" y1="${y}" x2="${left + plotW}" y2="${y}" stroke="#ddd"/>`);
    out.push(`<text x="${left - 6}" y="${y + 4}" text-anchor="end" font-size="11">${fmt(v)}</text>`);
  }
  out.push(`<text x="16" y="${plotTop + plotH / 2}" font-size="12" transform="rotate(-90 16 ${plotTop + plotH / 2})" text-anchor="middle">${xmlEscape(c.unit)}</text>`);
  const groupW = plotW / Math.max(1, xs.length);
  const barW = Math.max(2, (groupW * 0.8) / Math.max(1, c.series.length));
  xs.forEach((x, gi) => {
    const gx = left + gi * groupW + groupW * 0.1;
    c.series.forEach((s, si) => {
      const p = s.points.find((q) => q.x === x);
      if (!p) return;
      const h = (plotH * Math.max(0, p.y)) / max;
      const bx = gx + si * barW;
      out.push(`<rect x="${bx.toFixed(1)}" y="${(plotTop + plotH - h).toFixed(1)}" width="${(barW - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[si % COLORS.length]}"><title>${xmlEscape(`${s.name} @ ${x}: ${p.y}`)}</title></rect>`);
      if (c.series.length * xs.length <= 16) out.push(`<text x="${(bx + barW / 2).toFixed(1)}" y="${(plotTop + plotH - h - 3).toFixed(1)}" text-anchor="middle" font-size="9">${fmt(p.y)}</text>`);
    });
    out.push(`<text x="${(left + gi * groupW + groupW / 2).toFixed(1)}" y="${plotTop + plotH + 16}" text-anchor="middle" font-size="11">${xmlEscape(x)}</text>`);
  });
  let lx = left;
  const ly = plotTop + plotH + 36;
  c.series.forEach((s, si) => {
    out.push(`<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[si % COLORS.length]}"/>`);
    out.push(`<text x="${lx + 14}" y="${ly}" font-size="11">${xmlEscape(s.name)}</text>`);
    lx += 24 + s.name.length * 6.5;
  });
  return out.join('\n');
}

export function svg(title: string, charts: readonly Chart[]): string {
  const height = 36 + charts.length * PANEL_H;
  const body = charts.map((c, i) => panel(c, 36 + i * PANEL_H)).join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${PANEL_W}" height="${height}" viewBox="0 0 ${PANEL_W} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${PANEL_W / 2}" y="22" text-anchor="middle" font-size="17">${xmlEscape(title)}</text>
${body}
</svg>
`;
}
