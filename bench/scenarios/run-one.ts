/**
 * Runs one scenario of the suite on its own, for testing a scenario before (or without) the
 * suite runner:
 *
 *   node dist/bench/scenarios/run-one.js NAME [--full]
 *
 * Loads bench/scenarios/NAME.js, runs it with a fresh temp directory and no earlier results,
 * and prints its table, goals and shared figures as JSON. Exit 0 when it ran, 1 when it
 * failed, 2 on bad arguments.
 */
import { join } from 'node:path';
import { installCleanup, tempDir } from '../lib/proc';
import type { Scenario, ScenarioResult } from '../lib/types';

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const full = args.includes('--full');
  const names = args.filter((a) => a !== '--full');
  if (names.length !== 1 || names[0]!.startsWith('-')) {
    process.stderr.write('usage: node dist/bench/scenarios/run-one.js NAME [--full]\n');
    return 2;
  }
  const name = names[0]!;
  let scenario: Scenario;
  try {
    scenario = (require(join(__dirname, `${name}.js`)) as { scenario: Scenario }).scenario;
  } catch (err) {
    process.stderr.write(`run-one: cannot load scenario "${name}": ${(err as Error).message}\n`);
    return 2;
  }
  installCleanup();
  const t0 = Date.now();
  const r: ScenarioResult = await scenario.run({ full, dir: tempDir(`crowd-bench-${name}-`), earlier: new Map() });
  process.stdout.write(`${JSON.stringify({ scenario: r.scenario, seconds: (Date.now() - t0) / 1000, table: r.table, ...(r.tables ? { tables: r.tables } : {}), goals: r.goals, shared: r.shared ?? {} }, null, 2)}\n`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`run-one: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
