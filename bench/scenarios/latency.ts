/**
 * latency: crowd's ack latency at fixed request rates (25%, 50% and 75% of its maximum),
 * measured by an open-loop constant-rate client (bench/lib/open-loop.ts) that counts the
 * time a request waited for a connection, so that a stall shows in every request it delayed
 * (no coordinated omission). The uWS no-op server at the same rates is the reference: what
 * this client, this machine and this Node.js measure when the server does nothing.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runOpenLoop, type OpenLoopRun } from '../lib/open-loop';
import { progress } from '../lib/proc';
import { BODY, CONTENT_TYPE, PATH, settled, startCrowd, startNoop } from '../lib/servers';
import type { Scenario, ScenarioContext, ScenarioResult } from '../lib/types';
import { okRate, requireWrk, runWrk, writeWrkScript, type WrkResult } from '../lib/wrk';

const LEVELS = [0.25, 0.5, 0.75] as const;
/** Total keep-alive connections of the client (split between its processes), as the max-rate measurement. */
export const CONNECTIONS = 256;
/** Above this rate per process, the client runs as several processes side by side. */
export const RATE_PER_PROCESS = 10_000;
const GOAL_P99_MS = 5;

export function clientProcesses(rate: number): number {
  return Math.max(1, Math.min(2, Math.ceil(rate / RATE_PER_PROCESS)));
}

export interface MaxRate {
  rps: number;
  source: string;
  wrk?: WrkResult;
}

/**
 * crowd's maximum ingest rate: the ingest scenario's (or latency's) figure when it ran
 * earlier in this suite run, else measured here with wrk at 256 connections against a fresh
 * crowd (no targets).
 */
export async function crowdMaxRate(ctx: ScenarioContext, who: string): Promise<MaxRate> {
  for (const from of ['ingest', 'latency']) {
    const rps = ctx.earlier.get(from)?.shared?.crowd_max_rps;
    if (typeof rps === 'number' && rps > 0) return { rps, source: `${from} scenario (wrk, 256 connections)` };
  }
  requireWrk();
  const warmup = ctx.full ? 2 : 1;
  const seconds = ctx.full ? 10 : 3;
  progress(`${who}: measuring crowd's max rate (wrk, ${CONNECTIONS} connections, ${seconds} s)`);
  const dir = join(ctx.dir, 'max-rate');
  const crowd = await startCrowd(dir);
  try {
    const script = writeWrkScript(ctx.dir, 'max-rate', BODY, CONTENT_TYPE);
    const url = `http://127.0.0.1:${crowd.port}${PATH}`;
    await runWrk(url, { seconds: warmup, connections: CONNECTIONS, threads: 2, script });
    const w = await runWrk(url, { seconds, connections: CONNECTIONS, threads: 2, script });
    const rps = okRate(w);
    if (!(rps > 0)) throw new Error(`crowd answered no 2xx to wrk (${JSON.stringify(w.errors)})`);
    return { rps, source: `measured here (wrk, ${CONNECTIONS} connections, 2 threads, ${seconds} s after ${warmup} s)`, wrk: w };
  } finally {
    await crowd.stop();
  }
}

interface LevelRun {
  system: 'crowd' | 'uWS no-op';
  level: number;
  rate: number;
  run: OpenLoopRun;
}

export const scenario: Scenario = {
  name: 'latency',
  describe: 'ack latency at 25/50/75% of the max rate, open-loop constant-rate client (no coordinated omission)',
  async run(ctx): Promise<ScenarioResult> {
    const seconds = ctx.full ? 20 : 4;
    const refSeconds = ctx.full ? 10 : 1;
    const maxLateSeconds = ctx.full ? 2 : 1;
    const warmupSeconds = ctx.full ? 2 : 0.5;
    const max = await crowdMaxRate(ctx, 'latency');
    const bodyFile = join(ctx.dir, 'latency.body');
    writeFileSync(bodyFile, BODY);
    const rates = LEVELS.map((l) => Math.max(100, Math.round((l * max.rps) / 100) * 100));
    const runs: LevelRun[] = [];

    const run = async (system: LevelRun['system'], port: number, i: number, secs: number): Promise<OpenLoopRun> => {
      const rate = rates[i]!;
      const processes = clientProcesses(rate);
      progress(`latency: ${system} at ${rate} req/s (${LEVELS[i]! * 100}% of ${Math.round(max.rps)}), ${secs} s, ${processes} client process(es)`);
      const r = await runOpenLoop({ url: `http://127.0.0.1:${port}${PATH}`, rate, seconds: secs, connections: CONNECTIONS, processes, bodyFile, contentType: CONTENT_TYPE, warmupSeconds, maxLateSeconds });
      runs.push({ system, level: LEVELS[i]!, rate, run: r });
      return r;
    };

    // Both servers run throughout (the idle one costs nothing); each level runs crowd, then the
    // no-op server right after it, so that both see about the same machine.
    const crowd = await startCrowd(join(ctx.dir, 'crowd'));
    try {
      const noop = await startNoop();
      try {
        for (let i = 0; i < LEVELS.length; i++) {
          await run('crowd', crowd.port, i, seconds);
          if (!crowd.running) throw crowd.failure('exited during the run');
          await run('uWS no-op', noop.port, i, refSeconds);
          if (!noop.running) throw noop.failure('exited during the run');
          await settled(crowd); // the next level starts on a quiet log
        }
      } finally {
        await noop.stop();
      }
    } finally {
      await crowd.stop();
    }
    runs.sort((a, b) => (a.system === b.system ? a.level - b.level : a.system === 'crowd' ? -1 : 1));

    const f = (n: number, d = 2) => n.toFixed(d);
    const label = (r: LevelRun) => `${r.level * 100}% (${r.rate}/s)`;
    const table: string[][] = [['system', 'level (offered req/s)', 'achieved req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'errors/unsent', 'send delay p99 ms', 'waited for a connection', 'client loop delay p99 ms']];
    for (const r of runs) {
      const l = r.run.latency_ms;
      table.push([r.system, label(r), f(r.run.achieved_rps, 0), f(l.p50), f(l.p90), f(l.p99), f(l['p99.9']), f(l.max), `${r.run.errors + r.run.unsent + r.run.unfinished}`, f(r.run.send_delay_ms.p99), `${r.run.conn_waits}`, f(r.run.loop_delay_ms.p99)]);
    }
    const at50 = runs.find((r) => r.system === 'crowd' && r.level === 0.5)!;
    const ref50 = runs.find((r) => r.system === 'uWS no-op' && r.level === 0.5);
    const p99 = at50.run.latency_ms.p99;
    const lost50 = at50.run.errors + at50.run.unsent + at50.run.unfinished;
    const met = p99 <= GOAL_P99_MS && lost50 === 0;
    const refP99 = ref50 ? ref50.run.latency_ms.p99 : null;
    const why: string[] = [];
    if (at50.run.loop_delay_ms.p99 > p99 / 2) why.push(`the client's own event loop ran late (timer delay p99 ${f(at50.run.loop_delay_ms.p99)} ms): crowd's main thread, its LMDB writer and the client saturate the 2 cores`);
    else why.push(`each ack waits for its group commit (LMDB commit + fdatasync) on 2 cores shared with the client${at50.run.conn_waits ? `; ${at50.run.conn_waits} requests found all ${CONNECTIONS} connections busy (stalls of the server)` : ''}`);
    if (refP99 !== null) why.push(refP99 > GOAL_P99_MS ? `even the no-op server measured p99 ${f(refP99)} ms at this rate: this client and machine cannot show ${GOAL_P99_MS} ms here` : `the no-op server at the same rate: p99 ${f(refP99)} ms`);
    const note = met ? undefined : why.join('; ');
    const series = (system: LevelRun['system'], pick: 'p50' | 'p99') => ({
      name: `${system} ${pick}`,
      points: runs.filter((r) => r.system === system).map((r) => ({ x: `${r.level * 100}% (${r.rate}/s)`, y: Number(r.run.latency_ms[pick].toFixed(2)) })),
    });
    return {
      scenario: 'latency',
      title: 'Ack latency at fixed request rates (open loop)',
      method:
        `An open-loop client (undici Pool, ${CONNECTIONS} keep-alive connections, ` +
        `1 process up to ${RATE_PER_PROCESS} req/s, else 2 at half the rate each, HDR histograms merged) schedules request i at start + i/R and records ` +
        `response time minus that intended time, so time spent waiting for a free connection or for the client's 1 ms timer counts; ` +
        `${seconds} s per rate after a ${warmupSeconds} s warm-up at the same rate (requests not sent ${maxLateSeconds} s after the window are given up and counted as unsent, at their wait so far), at 25/50/75% of crowd's max rate (${Math.round(max.rps)} req/s, ${max.source}), ` +
        `each followed by the uWS no-op server at the same rate for ${refSeconds} s (the floor of this client and machine).`,
      params: { levels: LEVELS, rates, seconds, reference_seconds: refSeconds, warmup_seconds: warmupSeconds, max_late_seconds: maxLateSeconds, connections: CONNECTIONS, rate_per_process: RATE_PER_PROCESS, max_rate: Math.round(max.rps), max_rate_source: max.source, body: BODY },
      table,
      goals: [{ name: 'crowd p99 ack latency at 50% of max rate', target: `<= ${GOAL_P99_MS} ms`, measured: `${f(p99)} ms at ${Math.round(at50.run.achieved_rps)} req/s${lost50 ? `, ${lost50} errors` : ''}`, met, note }],
      charts: [{ title: 'Ack latency by offered rate (open loop)', unit: 'ms', series: [series('crowd', 'p50'), series('crowd', 'p99'), series('uWS no-op', 'p50'), series('uWS no-op', 'p99')] }],
      data: { max_rate: max, runs },
      shared: { crowd_max_rps: max.rps, latency_p99_ms_at_50pct: p99 },
    };
  },
};
