/**
 * The ingest benchmark: the same wrk load against a uWebSockets.js no-op server (the ceiling)
 * and against crowd (which fsyncs every request before it answers), one after the other on
 * the same machine. The figure that matters is the ratio crowd / no-op req/s: on a small,
 * shared machine absolute numbers move from run to run, the ratio much less.
 *
 *   node dist/bench/ingest.js [--duration S] [--warmup S] [--connections N] [--threads N] [--runs N]
 *
 * Prints a table on stdout (progress on stderr) and writes bench/results/ingest.json. Exits 0
 * whatever the ratio (a benchmark is not a test); non-zero only when something failed to run.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { Child, ROOT, cleanup, findOnPath, git, installCleanup, progress, removeTemp, tempDir } from './lib/proc';
import { machine } from './lib/report';
import { BODY, CONTENT_TYPE, PATH, settled, startCrowd, startNoop, type CrowdStatus } from './lib/servers';
import { WRK_TIMEOUT_S, runWrk, writeWrkScript, wrkVersion, type WrkResult } from './lib/wrk';

const RESULTS_FILE = join(ROOT, 'bench', 'results', 'ingest.json');

/** crowd / no-op req/s we hold ourselves to now, and where the project wants to get. */
const TARGET_RATIO = 0.6;
const GOAL_RATIO = 0.75;
const SETTLE_TIMEOUT_MS = 10_000;

const USAGE = `usage: node dist/bench/ingest.js [options]
  --duration S      seconds per measured run (default 10)
  --warmup S        seconds of warm-up load before each measured run, 0 for none (default 2)
  --connections N   open connections (default 256)
  --threads N       wrk threads (default 2)
  --runs N          measured runs per system; with more than one, no-op and crowd alternate
                    and the table shows medians (default 1)`;

interface Params {
  readonly durationS: number;
  readonly warmupS: number;
  readonly connections: number;
  readonly threads: number;
  readonly runs: number;
}

type System = 'noop' | 'crowd';

interface CrowdCheck {
  /** log.last_offset once the warm-up's last requests were flushed, and after the measured run. */
  last_offset_before: number;
  last_offset_after: number;
  /** Requests stored during the measured run. */
  stored: number;
  /** 2xx responses wrk counted: each one promises a stored request. */
  acknowledged: number;
  verdict: 'OK' | 'MISMATCH';
  reason: string;
  crowd_version: string | null;
  exit: string;
}

interface RunResult {
  system: System;
  run: number;
  wrk: WrkResult;
  /** Responses below 400: crowd answers only 200 or 4xx/5xx, so these are its acks. */
  ok_responses: number;
  socket_errors: number;
  req_per_s: number;
  crowd?: CrowdCheck;
}

interface Figures {
  req_per_s: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
}

// ---------------------------------------------------------------------------------------------
// crowd's admin API

/**
 * Requests still in flight when wrk stops are stored after it stopped counting: waits until
 * the log holds still, and checks that the figures come from the crowd that took the load.
 */
async function settledStatus(crowd: Child): Promise<CrowdStatus> {
  const s = await settled(crowd, SETTLE_TIMEOUT_MS);
  if (s.ingest.port !== crowd.port) throw crowd.failure(`admin port ${crowd.adminPort} answered for ingest port ${s.ingest.port}, not ${crowd.port}`);
  return s;
}

/**
 * Every 2xx promises a stored request, so stored < acknowledged means loss. Stored may exceed
 * acknowledged by at most one request per connection: wrk sends one at a time per connection
 * and stops counting with those still in flight.
 */
function checkCrowd(before: number, after: number, acknowledged: number, connections: number): Pick<CrowdCheck, 'stored' | 'verdict' | 'reason'> {
  const stored = after - before;
  if (stored < acknowledged) return { stored, verdict: 'MISMATCH', reason: `${acknowledged - stored} acknowledged requests are not in the log` };
  if (stored - acknowledged > connections) return { stored, verdict: 'MISMATCH', reason: `${stored - acknowledged} more stored than acknowledged, above the ${connections} that can be in flight` };
  return { stored, verdict: 'OK', reason: `${stored - acknowledged} stored but not counted by wrk (in flight when it stopped; at most ${connections})` };
}

// ---------------------------------------------------------------------------------------------
// One measured run: fresh server, warm-up, measurement, stop.

async function measure(system: System, run: number, p: Params, script: string, root: string): Promise<RunResult> {
  const label = system === 'noop' ? 'no-op' : 'crowd';
  const crowdDir = join(root, `crowd-run-${run}`);
  const server = system === 'noop' ? await startNoop() : await startCrowd(crowdDir);
  const wrkRun = (seconds: number) => runWrk(url, { seconds, connections: p.connections, threads: p.threads, script });
  const url = `http://127.0.0.1:${server.port}${PATH}`;
  try {
    if (p.warmupS > 0) {
      progress(`run ${run}/${p.runs} ${label}: ${p.warmupS} s warm-up`);
      await wrkRun(p.warmupS);
      if (!server.running) throw server.failure('exited during the warm-up');
    }
    const before = system === 'crowd' ? await settledStatus(server) : null;
    progress(`run ${run}/${p.runs} ${label}: measuring ${p.durationS} s`);
    const wrk = await wrkRun(p.durationS);
    if (!server.running) throw server.failure('exited during the run');
    const after = before ? await settledStatus(server) : null;
    const how = await server.stop();
    // crowd exits 0 after SIGTERM; anything else is worth knowing, but the figures still stand.
    if (system === 'crowd' && how !== 'exit code 0') progress(`warning: crowd ended with ${how} after SIGTERM`);
    const e = wrk.errors;
    const okResponses = wrk.requests - e.status;
    const result: RunResult = {
      system,
      run,
      wrk,
      ok_responses: okResponses,
      socket_errors: e.connect + e.read + e.write + e.timeout,
      req_per_s: okResponses / (wrk.duration_us / 1e6),
    };
    if (before && after) {
      result.crowd = {
        last_offset_before: before.log.last_offset,
        last_offset_after: after.log.last_offset,
        acknowledged: okResponses,
        ...checkCrowd(before.log.last_offset, after.log.last_offset, okResponses, p.connections),
        crowd_version: after.version ?? null,
        exit: how,
      };
    }
    return result;
  } finally {
    await server.stop(); // already stopped unless something failed
    if (system === 'crowd') removeTemp(crowdDir);
  }
}

// ---------------------------------------------------------------------------------------------
// Figures and report

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Medians over the runs of one system; errors are summed, since any error matters. */
function figures(runs: RunResult[]): Figures {
  return {
    req_per_s: median(runs.map((r) => r.req_per_s)),
    p50_ms: median(runs.map((r) => r.wrk.latency_us.p50)) / 1000,
    p99_ms: median(runs.map((r) => r.wrk.latency_us.p99)) / 1000,
    errors: runs.reduce((n, r) => n + r.wrk.errors.status + r.socket_errors, 0),
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('   ')).join('\n');
}

function report(p: Params, noop: Figures, crowd: Figures, ratio: number, runs: RunResult[]): string {
  const per = p.runs === 1 ? '1 run each' : `median of ${p.runs} runs each`;
  const warm = p.warmupS > 0 ? ` after a ${p.warmupS} s warm-up` : '';
  const lines = [
    `ingest: POST ${PATH} (${Buffer.byteLength(BODY)}-byte JSON), ${p.connections} connections, ${p.threads} threads, ${p.durationS} s${warm}, ${per}`,
    '',
    table([
      ['system', 'req/s', 'p50 ms', 'p99 ms', 'errors'],
      ...([['no-op', noop], ['crowd', crowd]] as const).map(([name, f]) => [name, f.req_per_s.toFixed(0), f.p50_ms.toFixed(2), f.p99_ms.toFixed(2), `${f.errors}`]),
    ]),
    '',
    `crowd / no-op req/s: ${ratio.toFixed(2)}   target >= ${TARGET_RATIO.toFixed(2)}: ${ratio >= TARGET_RATIO ? 'PASS' : 'BELOW'}   (project goal ${GOAL_RATIO.toFixed(2)})`,
  ];
  for (const r of runs) {
    const c = r.crowd;
    if (!c) continue;
    const e = r.wrk.errors;
    const which = p.runs === 1 ? '' : ` (run ${r.run})`;
    lines.push(
      `crowd check${which}: ${c.acknowledged} acknowledged, ${c.stored} stored (log.last_offset ${c.last_offset_before} -> ${c.last_offset_after}), ` +
        `${e.status} non-2xx, ${r.socket_errors} socket errors (connect ${e.connect}, read ${e.read}, write ${e.write}, timeout ${e.timeout}): ${c.verdict}, ${c.reason}`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------

function parseParams(argv: string[]): Params {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '10' },
      warmup: { type: 'string', default: '2' },
      connections: { type: 'string', default: '256' },
      threads: { type: 'string', default: '2' },
      runs: { type: 'string', default: '1' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const int = (name: string, text: string, min: number): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be a whole number >= ${min}, got "${text}"`);
    return n;
  };
  const p: Params = {
    durationS: int('duration', values.duration, 1),
    warmupS: int('warmup', values.warmup, 0),
    connections: int('connections', values.connections, 1),
    threads: int('threads', values.threads, 1),
    runs: int('runs', values.runs, 1),
  };
  // wrk refuses fewer connections than threads.
  if (p.connections < p.threads) throw new UsageError(`--connections (${p.connections}) must be at least --threads (${p.threads})`);
  return p;
}

class UsageError extends Error {}

async function main(): Promise<void> {
  let p: Params;
  try {
    p = parseParams(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (!findOnPath('wrk')) {
    process.stderr.write('bench: wrk not found; install it with "apt-get install wrk" (or run make deps)\n');
    process.exit(1);
  }
  installCleanup();
  const startedMachine = machine();
  const root = tempDir();
  const script = writeWrkScript(root, 'ingest', BODY, CONTENT_TYPE);

  const runs: RunResult[] = [];
  for (let run = 1; run <= p.runs; run++) {
    // Alternating spreads slow drifts of a shared machine over both systems.
    runs.push(await measure('noop', run, p, script, root));
    runs.push(await measure('crowd', run, p, script, root));
  }
  cleanup();

  const noop = figures(runs.filter((r) => r.system === 'noop'));
  const crowd = figures(runs.filter((r) => r.system === 'crowd'));
  const ratio = noop.req_per_s > 0 ? crowd.req_per_s / noop.req_per_s : 0;
  const results = {
    benchmark: 'ingest',
    date: new Date().toISOString(),
    git: { commit: git(['rev-parse', 'HEAD']), dirty: (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '' },
    machine: startedMachine,
    node: process.version,
    wrk: wrkVersion(),
    params: {
      duration_s: p.durationS,
      warmup_s: p.warmupS,
      connections: p.connections,
      threads: p.threads,
      runs: p.runs,
      wrk_timeout_s: WRK_TIMEOUT_S,
      method: 'POST',
      path: PATH,
      content_type: CONTENT_TYPE,
      body: BODY,
      body_bytes: Buffer.byteLength(BODY),
    },
    summary: { noop, crowd, ratio, target_ratio: TARGET_RATIO, goal_ratio: GOAL_RATIO, verdict: ratio >= TARGET_RATIO ? 'PASS' : 'BELOW' },
    runs,
  };
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(RESULTS_FILE, JSON.stringify(results, null, 2) + '\n');

  process.stdout.write(`${report(p, noop, crowd, ratio, runs)}\nresults: ${relative(process.cwd(), RESULTS_FILE)}\n`);
}

main().then(
  // Exit explicitly: fetch's keep-alive sockets would otherwise hold the process a few seconds.
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`bench: ${err.message}\n`);
    process.exit(1);
  },
);
