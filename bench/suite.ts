/**
 * The benchmark suite: every scenario runs crowd and its comparison systems one after the
 * other on this machine, with the same load generator and payload, and reports ratios.
 *
 *   node dist/bench/suite.js [--full] [--only ingest,latency,...] [--list]
 *
 * Writes bench/results/<scenario>.json and .svg for each scenario that ran and, when every
 * scenario ran, bench/results/summary.md. Exits 0 when every scenario ran (whatever the
 * figures: a benchmark is not a test), 1 when one failed (a missing tool, a server that did
 * not start), 2 on bad flags.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanup, installCleanup, progress, removeTemp, tempDir } from './lib/proc';
import { RESULTS_DIR, printResult, writeScenario, writeSummary } from './lib/report';
import type { Scenario, ScenarioResult } from './lib/types';
import { scenario as drain } from './scenarios/drain';
import { scenario as e2e } from './scenarios/e2e';
import { scenario as ingest } from './scenarios/ingest';
import { scenario as latency } from './scenarios/latency';
import { scenario as payload } from './scenarios/payload';
import { scenario as recovery } from './scenarios/recovery';
import { scenario as replication } from './scenarios/replication';

/** In this order: latency and e2e use ingest's measured maximum. */
const SCENARIOS: readonly Scenario[] = [ingest, latency, drain, e2e, recovery, payload, replication];

const USAGE = `usage: node dist/bench/suite.js [--full] [--only NAME,...] [--list]
  --full        longer runs and larger backlogs (make bench-full); default: quick (make bench)
  --only NAMES  run only these scenarios (comma-separated); the summary is written only when all run
  --list        print the scenarios and exit`;

async function main(): Promise<number> {
  let values: { full: boolean; only?: string; list: boolean; help: boolean };
  try {
    values = parseArgs({ options: { full: { type: 'boolean', default: false }, only: { type: 'string' }, list: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } } }).values as typeof values;
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (values.list) {
    for (const s of SCENARIOS) process.stdout.write(`${s.name.padEnd(10)} ${s.describe}\n`);
    return 0;
  }
  let chosen = SCENARIOS;
  if (values.only !== undefined) {
    const names = values.only.split(',').map((n) => n.trim()).filter(Boolean);
    const unknown = names.filter((n) => !SCENARIOS.some((s) => s.name === n));
    if (unknown.length > 0) {
      process.stderr.write(`bench: unknown scenario ${unknown.join(', ')} (scenarios: ${SCENARIOS.map((s) => s.name).join(', ')})\n`);
      return 2;
    }
    chosen = SCENARIOS.filter((s) => names.includes(s.name));
  }
  installCleanup();
  const started = Date.now();
  const results: ScenarioResult[] = [];
  const failed: string[] = [];
  const earlier = new Map<string, ScenarioResult>();
  for (const s of chosen) {
    const t0 = Date.now();
    progress(`${s.name}: starting (${values.full ? 'full' : 'quick'})`);
    const dir = tempDir(`crowd-bench-${s.name}-`);
    try {
      const r = await s.run({ full: values.full, dir, earlier });
      earlier.set(s.name, r);
      results.push(r);
      writeScenario(r, values.full);
      process.stdout.write(`\n${printResult(r)}\n(${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    } catch (err) {
      failed.push(s.name);
      // No results of an earlier run may pass for this run's.
      for (const ext of ['json', 'svg']) rmSync(join(RESULTS_DIR, `${s.name}.${ext}`), { force: true });
      process.stderr.write(`bench: ${s.name} failed: ${(err as Error).message}\n`);
    } finally {
      cleanup();
      removeTemp(dir);
    }
  }
  if (failed.length === 0 && chosen.length === SCENARIOS.length) {
    writeSummary(results, values.full, values.full ? 'make bench-full' : 'make bench');
    process.stdout.write('\nsummary: bench/results/summary.md\n');
  }
  process.stdout.write(`\n${results.length} scenarios in ${((Date.now() - started) / 1000).toFixed(0)} s${failed.length ? `; FAILED: ${failed.join(', ')}` : ''}\n`);
  return failed.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`bench: ${err.message}\n`);
    process.exit(1);
  },
);
