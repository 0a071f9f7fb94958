/**
 * Recovery: how long crowd takes from start to ready when its log holds a large backlog, and
 * how much memory it holds while it delivers it, against the same start on an empty log.
 *
 * 1. Empty: crowd with one route -> one http target (a uWS no-op upstream, concurrency 64) on
 *    an empty log: ms from spawn to the "listening" log line and to the first 200 of
 *    `/readyz` (polled every READY_POLL_MS; the median of STARTS starts, the machine is noisy),
 *    then its RSS for a few seconds.
 * 2. Backlog: N envelopes written straight into a fresh log (bench/lib/preload, a child
 *    process; the target's offset set to 0 so that crowd owes it all N), then the same start,
 *    then RSS sampled every RSS_SAMPLE_MS and `/status` polled while crowd delivers the backlog
 *    (until everything is delivered or the drain's time bound).
 *
 * RSS is VmRSS from /proc, split into anonymous memory (heap, buffers) and file-backed pages
 * (RssFile: the LMDB map's pages that crowd read, which the kernel may reclaim at will).
 */
import { readFileSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { RECORD_ENTRIES_DEFAULT } from '../lib/preload';
import { BENCH_DIST, Child, ROOT, cpuSeconds, progress, rssBytes, sleep } from '../lib/proc';
import { PATH, crowdStatus, startCrowd, startNoop, type CrowdStatus } from '../lib/servers';
import type { Chart, Goal, Scenario, ScenarioContext, ScenarioResult } from '../lib/types';

const TARGET = 'upstream';
const CONCURRENCY = 64;
/**
 * Entries per log record in the backlog: the shape crowd's group commit gives a log under a
 * few hundred concurrent clients. Much larger records (thousands of entries, up to 4 MiB) make
 * the start slower: crowd counts the backlog 256 records at a time, the first chunk before it
 * listens.
 */
const RECORD_ENTRIES = RECORD_ENTRIES_DEFAULT;
const COUNT_QUICK = 1_000_000;
const COUNT_FULL = 10_000_000;
/** Drain time bounds (quick: a sample of the drain; full: long enough for a few million). */
const DRAIN_QUICK_S = 8;
const DRAIN_FULL_S = 240;
/** How long the idle crowd on an empty log is sampled. */
const EMPTY_SAMPLE_S = 1.5;
const READY_POLL_MS = 10;
const RSS_SAMPLE_MS = 250;
const STATUS_POLL_MS = 500;
const READY_TIMEOUT_MS = 30_000;
/** Starts per log (the last one is sampled); the table shows the median spawn -> ready. */
const STARTS = 3;
/** Goals from the issue. */
const READY_GOAL_MS = 1000;
const RSS_GOAL_MB = 200;
/** Log bytes per preloaded entry (about 224 with the benchmark body), with room to spare. */
const BYTES_PER_ENTRY_EST = 260;
/** Share of the free disk space a preload may take. */
const DISK_SHARE = 0.5;
/** Points of the RSS chart at most (samples are merged into wider steps beyond). */
const CHART_POINTS_MAX = 60;
const MB = 1024 * 1024;

interface Memory {
  rss: number;
  anon: number;
  file: number;
}

/** VmRSS and its anonymous and file-backed parts, in bytes, or null when the process is gone. */
function memory(pid: number): Memory | null {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string): number => {
      const m = new RegExp(`${name}:\\s+(\\d+) kB`).exec(s);
      return m ? Number(m[1]) * 1024 : 0;
    };
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') };
  } catch {
    return rssBytes(pid) === null ? null : { rss: rssBytes(pid)!, anon: 0, file: 0 };
  }
}

const mb = (bytes: number): string => (bytes / MB).toFixed(1);

interface StartFigures {
  /** Spawn to the "listening" log line. */
  listening_ms: number;
  /** Spawn to the first 200 of /readyz. */
  ready_ms: number;
  readyz_polls: number;
  memory_at_ready: Memory;
}

interface RssSample {
  t_ms: number;
  rss: number;
  anon: number;
  file: number;
}

interface StatusSample {
  t_ms: number;
  state: string;
  offset: number;
  delivered: number;
  lag: number;
  accepted: number;
  in_flight: number;
  dead_letters: number;
}

function crowdConfig(upstreamPort: number): Record<string, unknown> {
  return {
    routes: [{ name: 'leads', path: PATH, targets: [TARGET] }],
    targets: [{ name: TARGET, url: `http://127.0.0.1:${upstreamPort}`, concurrency: CONCURRENCY }],
  };
}

/** Starts crowd and measures spawn -> listening -> /readyz 200. */
async function startTimed(dir: string, upstreamPort: number): Promise<{ crowd: Child; start: StartFigures; spawnedAt: number }> {
  const spawnedAt = Date.now();
  const crowd = await startCrowd(dir, crowdConfig(upstreamPort), { timeoutMs: READY_TIMEOUT_MS });
  const listening = crowd.listeningAt - spawnedAt;
  const url = `http://127.0.0.1:${crowd.adminPort}/readyz`;
  let polls = 0;
  let lastAnswer = 'no answer';
  for (;;) {
    if (!crowd.running) throw crowd.failure('exited before /readyz answered 200');
    polls++;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
      lastAnswer = `status ${res.status}`;
    } catch (err) {
      lastAnswer = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message;
    }
    if (Date.now() - spawnedAt > READY_TIMEOUT_MS) throw crowd.failure(`was not ready (GET /readyz: ${lastAnswer}) within ${READY_TIMEOUT_MS} ms of its start`);
    await sleep(READY_POLL_MS);
  }
  const ready = Date.now() - spawnedAt;
  const mem = memory(crowd.pid);
  if (!mem) throw crowd.failure('exited right after it was ready');
  return { crowd, spawnedAt, start: { listening_ms: listening, ready_ms: ready, readyz_polls: polls, memory_at_ready: mem } };
}

/**
 * STARTS - 1 starts that are stopped as soon as crowd is ready, then the one that is kept
 * running; spawn -> listening and spawn -> ready are the medians of all of them.
 */
async function startsTimed(dir: string, upstreamPort: number): Promise<{ crowd: Child; start: StartFigures; spawnedAt: number; starts: StartFigures[] }> {
  const starts: StartFigures[] = [];
  for (let i = 1; i < STARTS; i++) {
    const r = await startTimed(dir, upstreamPort);
    starts.push(r.start);
    const how = await r.crowd.stop();
    if (how !== 'exit code 0') throw r.crowd.failure(`stopped with ${how} (SIGTERM)`);
  }
  const kept = await startTimed(dir, upstreamPort);
  starts.push(kept.start);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  return { ...kept, starts, start: { ...kept.start, listening_ms: median(starts.map((x) => x.listening_ms)), ready_ms: median(starts.map((x) => x.ready_ms)) } };
}

/** Samples memory every RSS_SAMPLE_MS until stopped; returns the samples (t from `t0`). */
function sampleMemory(pid: number, t0: number): { samples: RssSample[]; stop: () => void } {
  const samples: RssSample[] = [];
  const take = (): void => {
    const m = memory(pid);
    if (m) samples.push({ t_ms: Date.now() - t0, ...m });
  };
  take();
  const timer = setInterval(take, RSS_SAMPLE_MS);
  return {
    samples,
    stop: () => {
      clearInterval(timer);
      take();
    },
  };
}

function maxOf(samples: readonly RssSample[], key: 'rss' | 'anon' | 'file'): number {
  return samples.reduce((m, s) => Math.max(m, s[key]), 0);
}

async function upstreamCount(upstream: Child): Promise<number> {
  let count = -1;
  const got = upstream.waitFor(
    (line) => {
      if (!line.startsWith('{"count"')) return false;
      count = (JSON.parse(line) as { count: number }).count;
      return true;
    },
    10_000,
    'answer "stats"',
  );
  upstream.proc.stdin!.write('stats\n');
  await got;
  return count;
}

/** Runs bench/lib/preload in a child process; resolves with its JSON line. */
async function runPreload(logDir: string, count: number): Promise<Record<string, number>> {
  const timeoutMs = 60_000 + count / 20; // far above 100k entries/s
  const args = [join(BENCH_DIST, 'lib', 'preload.js'), '--dir', logDir, '--count', String(count), '--target', TARGET, '--record-entries', String(RECORD_ENTRIES)];
  const child = new Child('preload', process.execPath, args, { cwd: ROOT });
  let result: Record<string, number> | null = null;
  await child.waitFor(
    (line) => {
      if (!line.startsWith('{"count"')) return false;
      result = JSON.parse(line) as Record<string, number>;
      return true;
    },
    timeoutMs,
    `write ${count} entries`,
  );
  const how = await child.exited;
  if (how !== 'exit code 0') throw child.failure(`ended with ${how}`);
  return result!;
}

/** Chooses the backlog: the mode's count, or less when the disk cannot hold it. */
function backlogSize(ctx: ScenarioContext): { count: number; wanted: number; free_bytes: number; note: string | null } {
  const wanted = ctx.full ? COUNT_FULL : COUNT_QUICK;
  const fs = statfsSync(ctx.dir);
  const free = fs.bavail * fs.bsize;
  const fits = Math.floor((free * DISK_SHARE) / BYTES_PER_ENTRY_EST);
  if (fits >= wanted) return { count: wanted, wanted, free_bytes: free, note: null };
  const count = fits >= 1_000_000 ? Math.floor(fits / 1_000_000) * 1_000_000 : Math.floor(fits / 10_000) * 10_000;
  if (count < 10_000) throw new Error(`recovery: not enough free disk space in ${ctx.dir} (${mb(free)} MiB free) for a backlog`);
  return { count, wanted, free_bytes: free, note: `${wanted} entries need about ${mb(wanted * BYTES_PER_ENTRY_EST)} MiB; ${mb(free)} MiB free, so ${count} were used` };
}

/** A chart-sized series: the samples merged into steps of whole seconds (the max of each step). */
function rssSeries(samples: readonly RssSample[], key: 'rss' | 'anon' | 'file'): { x: string; y: number }[] {
  const lastS = samples.length > 0 ? samples[samples.length - 1]!.t_ms / 1000 : 0;
  const step = Math.max(1, Math.ceil(lastS / CHART_POINTS_MAX));
  const buckets = new Map<number, number>();
  for (const s of samples) {
    const b = Math.floor(s.t_ms / 1000 / step) * step;
    buckets.set(b, Math.max(buckets.get(b) ?? 0, s[key]));
  }
  return [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x: String(x), y: Math.round((y / MB) * 10) / 10 }));
}

async function run(ctx: ScenarioContext): Promise<ScenarioResult> {
  const size = backlogSize(ctx);
  const drainBoundS = ctx.full ? DRAIN_FULL_S : DRAIN_QUICK_S;
  const params = { backlog: size.count, backlog_wanted: size.wanted, record_entries: RECORD_ENTRIES, concurrency: CONCURRENCY, drain_bound_s: drainBoundS, empty_sample_s: EMPTY_SAMPLE_S, ready_poll_ms: READY_POLL_MS, rss_sample_ms: RSS_SAMPLE_MS, status_poll_ms: STATUS_POLL_MS, free_disk_bytes: size.free_bytes };
  if (size.note) progress(`recovery: ${size.note}`);

  const upstream = await startNoop({ count: true });
  try {
    // The first fetch() of a process loads undici (tens of ms): not crowd's time to be ready.
    await (await fetch(`http://127.0.0.1:${upstream.port}/warm-up`, { method: 'POST', body: '{}' })).arrayBuffer();
    // 1. Empty log.
    progress('recovery: crowd on an empty log');
    const emptyDir = join(ctx.dir, 'empty');
    const e = await startsTimed(emptyDir, upstream.port);
    const emptySampler = sampleMemory(e.crowd.pid, e.spawnedAt);
    await sleep(EMPTY_SAMPLE_S * 1000);
    emptySampler.stop();
    if (!e.crowd.running) throw e.crowd.failure('exited while idle on an empty log');
    const emptyStop = await e.crowd.stop();
    rmSync(emptyDir, { recursive: true, force: true });
    const empty = { ...e.start, starts: e.starts, max_memory: { rss: maxOf(emptySampler.samples, 'rss'), anon: maxOf(emptySampler.samples, 'anon'), file: maxOf(emptySampler.samples, 'file') }, samples: emptySampler.samples, stopped: emptyStop };

    // 2. Backlog.
    const backlogDir = join(ctx.dir, 'backlog');
    progress(`recovery: preloading ${size.count} entries`);
    const pre = await runPreload(join(backlogDir, 'data'), size.count);
    progress(`recovery: preloaded ${pre.count} entries in ${pre.seconds!.toFixed(1)} s (${Math.round(pre.per_s!)}/s, ${mb(pre.bytes!)} MiB); starting crowd on it`);
    upstream.proc.stdin!.write('reset\n'); // the warm-up request and the empty phase's

    const b = await startsTimed(backlogDir, upstream.port);
    const crowd = b.crowd;
    const readyAt = b.spawnedAt + b.starts[b.starts.length - 1]!.ready_ms;
    const sampler = sampleMemory(crowd.pid, b.spawnedAt);
    const cpuAtReady = cpuSeconds(crowd.pid);
    const statuses: StatusSample[] = [];
    let countedAtMs: number | null = null;
    let firstStatus: CrowdStatus | null = null;
    let drainedAtMs: number | null = null;
    const bound = readyAt + drainBoundS * 1000;
    let lastProgress = Date.now();
    try {
      for (;;) {
        if (!crowd.running) throw crowd.failure('exited while it delivered the backlog');
        const s = await crowdStatus(crowd);
        const t = s.targets.find((x) => x.name === TARGET);
        if (!t) throw new Error(`recovery: crowd's /status has no target "${TARGET}"`);
        firstStatus ??= s;
        const now = Date.now();
        statuses.push({ t_ms: now - b.spawnedAt, state: t.state, offset: t.offset, delivered: t.delivered, lag: t.lag, accepted: (t as unknown as { accepted: number }).accepted, in_flight: t.in_flight, dead_letters: t.dead_letters });
        if (countedAtMs === null && t.state !== 'starting') countedAtMs = now - b.spawnedAt;
        if (t.delivered + t.dead_letters >= size.count) {
          drainedAtMs = now - b.spawnedAt;
          break;
        }
        if (now >= bound) break;
        // Once the backlog is counted (state "starting" until then) delivery must begin.
        if (countedAtMs !== null && now - b.spawnedAt - countedAtMs > 5000 && t.delivered === 0) {
          throw new Error(`recovery: nothing delivered 5 s after crowd counted its backlog (target ${t.state}, offset ${t.offset}, lag ${t.lag}, accepted ${(t as unknown as { accepted: number }).accepted}): did the preload set the target's offset to 0?`);
        }
        if (now - lastProgress >= 5000) {
          lastProgress = now;
          progress(`recovery: ${t.delivered} delivered, lag ${t.lag}, RSS ${mb(sampler.samples[sampler.samples.length - 1]?.rss ?? 0)} MiB`);
        }
        await sleep(Math.max(0, Math.min(STATUS_POLL_MS, bound - Date.now())));
      }
    } finally {
      sampler.stop();
    }
    const cpuAtEnd = cpuSeconds(crowd.pid);
    const last = statuses[statuses.length - 1]!;
    const drainS = (b.spawnedAt + last.t_ms - readyAt) / 1000;
    const delivered = last.delivered;
    const delivered_per_s = delivered / drainS;
    // Steady rate: from the first poll at least 2 s after delivery began (the backlog counted) to the end.
    const steadyFrom = statuses.find((s) => s.t_ms >= (countedAtMs ?? readyAt - b.spawnedAt) + 2000);
    const steady_per_s = steadyFrom && last.t_ms > steadyFrom.t_ms ? (last.delivered - steadyFrom.delivered) / ((last.t_ms - steadyFrom.t_ms) / 1000) : null;
    const upstreamAnswered = await upstreamCount(upstream);
    const stopStarted = Date.now();
    const stopped = await crowd.stop();
    const stopMs = Date.now() - stopStarted;
    rmSync(backlogDir, { recursive: true, force: true });
    const cpuUsPerMsg = cpuAtReady !== null && cpuAtEnd !== null && delivered > 0 ? ((cpuAtEnd - cpuAtReady) * 1e6) / delivered : null;
    const startTarget = firstStatus!.targets.find((x) => x.name === TARGET)!;

    const backlog = {
      ...b.start,
      starts: b.starts,
      preload: pre,
      max_memory: { rss: maxOf(sampler.samples, 'rss'), anon: maxOf(sampler.samples, 'anon'), file: maxOf(sampler.samples, 'file') },
      target_at_first_status: startTarget,
      counted_ms: countedAtMs,
      drained_ms: drainedAtMs,
      drain_s: drainS,
      delivered,
      fraction: delivered / size.count,
      delivered_per_s,
      steady_per_s,
      upstream_answered: upstreamAnswered,
      cpu_us_per_msg: cpuUsPerMsg,
      stop_ms: stopMs,
      stopped,
      statuses,
      samples: sampler.samples,
    };

    const finished = drainedAtMs !== null;
    const label = `${size.count >= 1e6 ? `${size.count / 1e6}M` : size.count} backlog`;
    const table: string[][] = [
      ['log', 'entries', 'listening ms (median)', 'ready ms (median)', 'counted ms', 'RSS at ready MB', 'max RSS MB', 'max anon MB', 'max file MB', 'drained', 'msg/s', 'steady msg/s'],
      ['empty', '0', String(empty.listening_ms), String(empty.ready_ms), '-', mb(empty.memory_at_ready.rss), mb(empty.max_memory.rss), mb(empty.max_memory.anon), mb(empty.max_memory.file), '-', '-', '-'],
      [
        label,
        String(size.count),
        String(backlog.listening_ms),
        String(backlog.ready_ms),
        countedAtMs === null ? '-' : String(countedAtMs),
        mb(backlog.memory_at_ready.rss),
        mb(backlog.max_memory.rss),
        mb(backlog.max_memory.anon),
        mb(backlog.max_memory.file),
        `${delivered} (${(backlog.fraction * 100).toFixed(1)}%) in ${drainS.toFixed(1)} s${finished ? '' : ' (time bound)'}`,
        String(Math.round(delivered_per_s)),
        steady_per_s === null ? '-' : String(Math.round(steady_per_s)),
      ],
    ];

    const rssNote = `max anonymous ${mb(backlog.max_memory.anon)} MiB, file-backed (LMDB map pages read, reclaimable) ${mb(backlog.max_memory.file)} MiB`;
    const goals: Goal[] = [
      {
        name: `start to ready with a ${label}`,
        target: `< ${READY_GOAL_MS} ms`,
        measured: `${backlog.ready_ms} ms, median of ${STARTS} starts (${backlog.starts.map((x) => x.ready_ms).join(', ')}; empty log: ${empty.ready_ms} ms)`,
        met: backlog.ready_ms < READY_GOAL_MS,
        ...(backlog.ready_ms < READY_GOAL_MS ? {} : { note: `spawn to "listening" took ${backlog.listening_ms} ms (empty log: ${empty.listening_ms} ms)` }),
      },
      {
        name: `RSS while draining a ${label}`,
        target: `<= ${RSS_GOAL_MB} MB`,
        measured: `${mb(backlog.max_memory.rss)} MB max (${rssNote}; empty log: ${mb(empty.max_memory.rss)} MB) over ${drainS.toFixed(0)} s of drain, ${(backlog.fraction * 100).toFixed(0)}% of the backlog delivered`,
        met: backlog.max_memory.rss <= RSS_GOAL_MB * MB,
        ...(backlog.max_memory.rss <= RSS_GOAL_MB * MB
          ? {}
          : { note: backlog.max_memory.anon <= RSS_GOAL_MB * MB ? `the excess is file-backed LMDB pages (${mb(backlog.max_memory.file)} MiB) counted in RSS while mapped; anonymous memory stayed at ${mb(backlog.max_memory.anon)} MiB` : `anonymous memory reached ${mb(backlog.max_memory.anon)} MiB` }),
      },
    ];

    const charts: Chart[] = [
      {
        title: `crowd RSS while draining a ${label} (s from spawn)`,
        unit: 'MB',
        series: [
          { name: 'RSS', points: rssSeries(sampler.samples, 'rss') },
          { name: 'anonymous', points: rssSeries(sampler.samples, 'anon') },
          { name: 'file-backed', points: rssSeries(sampler.samples, 'file') },
        ],
      },
      {
        title: 'start to ready, empty log vs backlog',
        unit: 'ms',
        series: [
          { name: 'listening', points: [{ x: 'empty', y: empty.listening_ms }, { x: label, y: backlog.listening_ms }] },
          { name: 'ready', points: [{ x: 'empty', y: empty.ready_ms }, { x: label, y: backlog.ready_ms }] },
        ],
      },
      {
        title: 'max RSS, empty log vs backlog',
        unit: 'MB',
        series: [
          { name: 'RSS', points: [{ x: 'empty', y: Number(mb(empty.max_memory.rss)) }, { x: label, y: Number(mb(backlog.max_memory.rss)) }] },
          { name: 'anonymous', points: [{ x: 'empty', y: Number(mb(empty.max_memory.anon)) }, { x: label, y: Number(mb(backlog.max_memory.anon)) }] },
        ],
      },
    ];

    const notes: string[] = [];
    if (size.note) notes.push(size.note);
    if (!finished) {
      const eta = steady_per_s ? ` (all of it would take about ${Math.round(size.count / steady_per_s)} s at the steady rate)` : '';
      notes.push(`drain stopped at its ${drainBoundS} s bound with ${delivered} of ${size.count} delivered${eta}`);
    }
    if (countedAtMs !== null) notes.push(`crowd counted the backlog (target state "starting", nothing delivered) until ${countedAtMs} ms after its spawn`);
    if (finished && upstreamAnswered < size.count) notes.push(`the upstream answered ${upstreamAnswered}, fewer than ${size.count}`);

    return {
      scenario: 'recovery',
      title: `Recovery: start to ready and RSS with a ${label}`,
      method: `crowd (one route -> one http target, concurrency ${CONCURRENCY}, a uWS no-op upstream) started on an empty log and on a log preloaded with ${size.count} entries (target offset 0): ms from spawn to "listening" and to /readyz 200 (polled every ${READY_POLL_MS} ms; median of ${STARTS} starts), then VmRSS (anonymous / file-backed) every ${RSS_SAMPLE_MS} ms while it delivers the backlog for at most ${drainBoundS} s; counted ms is spawn to the end of the target's "starting" state (backlog counted, delivery begins), msg/s counts from ready, steady msg/s from 2 s after delivery began.`,
      params,
      table,
      goals,
      charts,
      data: { params, notes, empty, backlog },
      shared: {
        ready_ms_empty: empty.ready_ms,
        ready_ms_backlog: backlog.ready_ms,
        max_rss_mb_backlog: backlog.max_memory.rss / MB,
        max_anon_mb_backlog: backlog.max_memory.anon / MB,
        drain_msg_per_s: delivered_per_s,
      },
    };
  } finally {
    upstream.proc.stdin?.end();
    await upstream.stop();
  }
}

export const scenario: Scenario = {
  name: 'recovery',
  describe: 'start to ready and RSS with a 1M (full: 10M) entry backlog, against an empty log',
  run,
};
