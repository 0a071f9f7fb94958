/**
 * Runs one comparison system of the ingest benchmark by hand (the suite uses systems.ts itself).
 *
 *   node dist/bench/baselines/try.js naive|redis|nats [--connections N[,N...]] [--seconds S]
 *        [--warmup S] [--threads N] [--sync default|always] [--json]
 *
 * --connections   concurrency; a comma-separated list runs each in turn (default 64)
 * --seconds       measured seconds per run (default 5)
 * --warmup        warm-up seconds before each run (naive, nats; redis warms up with its
 *                 calibration run) (default 1)
 * --threads       wrk threads, naive only (default 2)
 * --sync          nats only: "always" adds sync_interval: always (needs nats-server >= 2.10)
 * --json          print each SystemRun as JSON too
 *
 * Prints one line per run; temp files go to a fresh directory under the OS temp dir, removed
 * at the end. Exits 1 when something failed to run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runNaive, runNats, runRedis, stopAll, type SystemRun } from './systems';

const BODY = '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}';
const CONTENT_TYPE = 'application/json';

function line(r: SystemRun): string {
  const l = r.latency_ms;
  const lat = l ? `p50 ${l.p50.toFixed(2)} ms  p90 ${l.p90.toFixed(2)} ms  p99 ${l.p99.toFixed(2)} ms  max ${l.max.toFixed(2)} ms` : 'no latency';
  const sync = r.detail.sync ? ` (sync ${String(r.detail.sync)})` : '';
  return `${r.system}${sync}  c=${r.connections}  ${r.rate.toFixed(0)} /s  (${r.requests} in ${r.seconds.toFixed(2)} s)  ${lat}  errors ${r.errors}  stored ${String(r.detail.stored_check)}`;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      connections: { type: 'string', default: '64' },
      seconds: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '1' },
      threads: { type: 'string', default: '2' },
      sync: { type: 'string', default: 'default' },
      json: { type: 'boolean', default: false },
    },
  });
  const system = positionals[0];
  if (system !== 'naive' && system !== 'redis' && system !== 'nats') throw new Error('usage: try.js naive|redis|nats [--connections N[,N...]] [--seconds S] [--warmup S] [--threads N] [--sync default|always] [--json]');
  const list = values.connections.split(',').map(Number);
  const seconds = Number(values.seconds);
  const warmupSeconds = Number(values.warmup);
  const threads = Number(values.threads);
  if (list.some((n) => !Number.isInteger(n) || n < 1) || !(seconds > 0) || !(warmupSeconds >= 0) || !(threads >= 1)) throw new Error('bad --connections, --seconds, --warmup or --threads');
  if (values.sync !== 'default' && values.sync !== 'always') throw new Error('--sync must be default or always');
  const sync = values.sync;

  const tmpDir = mkdtempSync(join(os.tmpdir(), 'crowd-baselines-'));
  // Also on Ctrl-C: systems.ts stops its processes and exits; this removes our directory.
  process.on('exit', () => rmSync(tmpDir, { recursive: true, force: true }));
  try {
    for (const connections of list) {
      const r =
        system === 'naive'
          ? await runNaive({ connections, seconds, warmupSeconds, threads, body: BODY, contentType: CONTENT_TYPE, tmpDir })
          : system === 'redis'
            ? await runRedis({ connections, seconds, body: BODY, tmpDir })
            : await runNats({ connections, seconds, warmupSeconds, body: BODY, tmpDir, sync });
      process.stdout.write(`${line(r)}\n`);
      if (values.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    }
  } finally {
    stopAll();
    rmSync(tmpDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`try: ${err.message}\n`);
    process.exit(1);
  },
);
