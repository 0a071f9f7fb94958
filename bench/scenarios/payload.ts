/**
 * Payload: ingest throughput by body size. For bodies of 100 B, 1 KiB, 16 KiB and 256 KiB,
 * the same wrk load (POST /leads, 64 connections, 2 threads) against the uWS no-op server
 * (the ceiling) and against crowd with no targets (every request appended to the LMDB log and
 * fdatasync'ed before its 200), one after the other per size, each on a fresh server with a
 * warm-up run first. crowd's log directory is removed after each run: at 256 KiB a run writes
 * gigabytes.
 */
import { statfsSync } from 'node:fs';
import { join } from 'node:path';
import { cpuSeconds, progress, removeTemp, type Child } from '../lib/proc';
import { CONTENT_TYPE, PATH, settled, startCrowd, startNoop } from '../lib/servers';
import { okRate, requireWrk, runWrk, writeWrkScript, type WrkResult } from '../lib/wrk';
import type { Chart, Goal, Scenario, ScenarioContext, ScenarioResult } from '../lib/types';

const SIZES: readonly { label: string; bytes: number }[] = [
  { label: '100 B', bytes: 100 },
  { label: '1 KiB', bytes: 1024 },
  { label: '16 KiB', bytes: 16 * 1024 },
  { label: '256 KiB', bytes: 256 * 1024 },
];
const CONNECTIONS = 64;
const THREADS = 2;
const QUICK = { seconds: 2, warmup: 1 };
const FULL = { seconds: 10, warmup: 2 };
/** Share of the free disk space one crowd run may fill (estimated from its warm-up rate). */
const DISK_SHARE = 0.5;
/** crowd's default log.max_bytes: beyond it crowd answers 503. */
const LOG_MAX_BYTES = 8 * 1024 ** 3;
const MB = 1e6;

/** A JSON body of exactly `bytes` bytes (at least 12). */
export function jsonBody(bytes: number): Buffer {
  const head = '{"data":"';
  const tail = '"}';
  const fill = bytes - head.length - tail.length;
  if (fill < 0) throw new Error(`payload: a ${bytes}-byte body is too small for JSON`);
  const s = head + 'x'.repeat(fill) + tail;
  return Buffer.from(s);
}

interface Run {
  system: 'no-op' | 'crowd';
  size: number;
  seconds: number;
  warmup: number;
  wrk: WrkResult;
  warmup_wrk: WrkResult | null;
  req_per_s: number;
  mb_per_s: number;
  errors: number;
  /** The server's CPU time (user + system, all threads) over the run's wall time: 1 = one core busy. */
  cpu_share: number | null;
  /** crowd: entries stored over the whole run (warm-up included), log bytes. */
  stored?: { last_offset: number; log_bytes: number };
}

function errorsOf(w: WrkResult): number {
  const e = w.errors;
  return e.status + e.connect + e.read + e.write + e.timeout;
}

function freeBytes(dir: string): number {
  const fs = statfsSync(dir);
  return fs.bavail * fs.bsize;
}

async function load(server: Child, script: string, seconds: number): Promise<WrkResult & { server_cpu_s: number | null }> {
  const cpu0 = cpuSeconds(server.pid);
  const wrk = await runWrk(`http://127.0.0.1:${server.port}${PATH}`, { seconds, connections: CONNECTIONS, threads: THREADS, script });
  const cpu1 = cpuSeconds(server.pid);
  if (!server.running) throw server.failure(`exited during a ${seconds} s run`);
  return { ...wrk, server_cpu_s: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null };
}

function result(system: Run['system'], size: number, wrk: WrkResult & { server_cpu_s: number | null }, warm: WrkResult | null, seconds: number, warmup: number): Run {
  const reqPerS = okRate(wrk);
  const cpuShare = wrk.server_cpu_s === null ? null : wrk.server_cpu_s / (wrk.duration_us / 1e6);
  return { system, size, seconds, warmup, wrk, warmup_wrk: warm, req_per_s: reqPerS, mb_per_s: (reqPerS * size) / MB, errors: errorsOf(wrk), cpu_share: cpuShare };
}

/**
 * The measured run's length for crowd: the mode's, or shorter when, at the warm-up's write
 * rate (with room to spare), it would fill more than DISK_SHARE of the free disk or reach
 * log.max_bytes (where crowd answers 503).
 */
async function boundedSeconds(crowd: Child, dir: string, size: { label: string; bytes: number }, warm: WrkResult | null, seconds: number, notes: string[]): Promise<number> {
  const held = (await settled(crowd)).log.bytes;
  // Envelope bytes per second: from the warm-up, or (none) as if it acknowledged 2000 req/s.
  const perS = (warm ? Math.max(okRate(warm), 1) : 2000) * (size.bytes + 200) * 1.5;
  const free = freeBytes(dir);
  const room = Math.min(free * DISK_SHARE, LOG_MAX_BYTES * 0.9 - held);
  if (perS * seconds <= room) return seconds;
  const bounded = Math.max(1, Math.floor(room / perS));
  notes.push(`${size.label}: crowd ran ${bounded} s, not ${seconds}: at its warm-up rate ${seconds} s could write ${((perS * seconds) / 1024 ** 3).toFixed(1)} GiB (${(free / 1024 ** 3).toFixed(1)} GiB free, log holds ${(held / 1024 ** 3).toFixed(1)} GiB of ${LOG_MAX_BYTES / 1024 ** 3} GiB)`);
  return bounded;
}

async function run(ctx: ScenarioContext): Promise<ScenarioResult> {
  requireWrk();
  const mode = ctx.full ? FULL : QUICK;
  const params = { sizes: SIZES.map((s) => s.bytes), connections: CONNECTIONS, threads: THREADS, seconds: mode.seconds, warmup_s: mode.warmup, content_type: CONTENT_TYPE, crowd: 'no targets, defaults (server.max_body_bytes 1 MiB, log.max_bytes 8 GiB)' };
  const runs: Run[] = [];
  const notes: string[] = [];
  const rows: { label: string; bytes: number; noop: Run; crowd: Run; ratio: number }[] = [];

  for (const size of SIZES) {
    const script = writeWrkScript(ctx.dir, `payload-${size.bytes}`, jsonBody(size.bytes), CONTENT_TYPE);

    progress(`payload: ${size.label}: no-op`);
    const noopServer = await startNoop();
    let noop: Run;
    try {
      const warm = mode.warmup > 0 ? await load(noopServer, script, mode.warmup) : null;
      noop = result('no-op', size.bytes, await load(noopServer, script, mode.seconds), warm, mode.seconds, mode.warmup);
    } finally {
      noopServer.proc.stdin?.end();
      await noopServer.stop();
    }
    runs.push(noop);

    progress(`payload: ${size.label}: crowd`);
    const crowdDir = join(ctx.dir, `crowd-${size.bytes}`);
    try {
      const crowdServer = await startCrowd(crowdDir);
      try {
        const warm = mode.warmup > 0 ? await load(crowdServer, script, mode.warmup) : null;
        const seconds = await boundedSeconds(crowdServer, ctx.dir, size, warm, mode.seconds, notes);
        const c = result('crowd', size.bytes, await load(crowdServer, script, seconds), warm, seconds, mode.warmup);
        const s = await settled(crowdServer);
        c.stored = { last_offset: s.log.last_offset, log_bytes: s.log.bytes };
        runs.push(c);
        const ratio = noop.req_per_s > 0 ? c.req_per_s / noop.req_per_s : 0;
        rows.push({ label: size.label, bytes: size.bytes, noop, crowd: c, ratio });
        if (c.errors > 0) notes.push(`${size.label}: crowd had ${c.errors} errors (status ${c.wrk.errors.status}, timeout ${c.wrk.errors.timeout}, connect ${c.wrk.errors.connect}, read ${c.wrk.errors.read}, write ${c.wrk.errors.write})`);
        if (noop.errors > 0) notes.push(`${size.label}: the no-op server had ${noop.errors} errors`);
      } finally {
        await crowdServer.stop();
      }
    } finally {
      removeTemp(crowdDir);
    }
  }

  const table: string[][] = [
    ['size', 'no-op req/s', 'crowd req/s', 'ratio', 'no-op MB/s', 'crowd MB/s', 'crowd p99 ms', 'crowd CPU', 'errors'],
    ...rows.map((r) => [
      r.label,
      String(Math.round(r.noop.req_per_s)),
      String(Math.round(r.crowd.req_per_s)),
      r.ratio.toFixed(2),
      r.noop.mb_per_s.toFixed(1),
      r.crowd.mb_per_s.toFixed(1),
      (r.crowd.wrk.latency_us.p99 / 1000).toFixed(1),
      r.crowd.cpu_share === null ? '-' : `${Math.round(r.crowd.cpu_share * 100)}%`,
      String(r.noop.errors + r.crowd.errors),
    ]),
  ];

  // The issue sets no goal for body sizes: the table and charts report, errors are in the notes.
  const goals: Goal[] = [];

  const charts: Chart[] = [
    {
      title: 'req/s by body size',
      unit: 'req/s',
      series: [
        { name: 'no-op', points: rows.map((r) => ({ x: r.label, y: Math.round(r.noop.req_per_s) })) },
        { name: 'crowd', points: rows.map((r) => ({ x: r.label, y: Math.round(r.crowd.req_per_s) })) },
      ],
    },
    {
      title: 'crowd / no-op req/s by body size',
      unit: 'ratio',
      series: [{ name: 'crowd / no-op', points: rows.map((r) => ({ x: r.label, y: Math.round(r.ratio * 100) / 100 })) }],
    },
    {
      title: 'MB/s by body size',
      unit: 'MB/s',
      series: [
        { name: 'no-op', points: rows.map((r) => ({ x: r.label, y: Math.round(r.noop.mb_per_s * 10) / 10 })) },
        { name: 'crowd', points: rows.map((r) => ({ x: r.label, y: Math.round(r.crowd.mb_per_s * 10) / 10 })) },
      ],
    },
  ];

  const shared: Record<string, number> = {};
  for (const r of rows) {
    shared[`ratio_${r.bytes}`] = r.ratio;
    shared[`crowd_req_per_s_${r.bytes}`] = r.crowd.req_per_s;
    shared[`crowd_mb_per_s_${r.bytes}`] = r.crowd.mb_per_s;
  }

  return {
    scenario: 'payload',
    title: 'Payload: req/s and MB/s by body size, crowd vs the uWS no-op server',
    method: `wrk POST ${PATH} (${CONNECTIONS} connections, ${THREADS} threads, ${mode.seconds} s after a ${mode.warmup} s warm-up, fresh server each run) with JSON bodies of ${SIZES.map((s) => s.label).join(', ')}, against the uWS no-op server and crowd with no targets (fdatasync before every 200); MB/s is body bytes (10^6) acknowledged per second; crowd CPU is its CPU time over the run's wall time (100% = one of the cores).`,
    params,
    table,
    goals,
    charts,
    data: { params, notes, rows: rows.map((r) => ({ size: r.bytes, label: r.label, ratio: r.ratio, noop: r.noop, crowd: r.crowd })), runs },
    shared,
  };
}

export const scenario: Scenario = {
  name: 'payload',
  describe: 'req/s and MB/s of crowd vs the uWS no-op server for bodies of 100 B to 256 KiB',
  run,
};
