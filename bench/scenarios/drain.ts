/**
 * drain: a backlog stored while the upstream was down, delivered to a uWS no-op upstream,
 * against a bare undici client sending the same requests (bench/drain.ts does the work; this
 * runs it as a child process and reads its figures).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIST, Child, ROOT, onCleanup } from '../lib/proc';
import type { Scenario, ScenarioResult } from '../lib/types';

const TARGET = 0.8;

interface DrainJson {
  params: Record<string, unknown>;
  summary: {
    crowd: { messages: number; seconds: number; msg_per_s: number; steady_msg_per_s: number | null; cpu_us_per_msg: number | null };
    ceiling: { messages: number; seconds: number; msg_per_s: number; cpu_us_per_msg: number | null };
    ratio: number;
    steady_ratio: number | null;
  };
}

export const scenario: Scenario = {
  name: 'drain',
  describe: 'backlog delivered to a no-op upstream vs a bare undici client',
  async run(ctx): Promise<ScenarioResult> {
    // Quick: large enough that the first probe after the upstream comes back (up to retry.max) weighs little.
    const count = ctx.full ? 1_000_000 : 100_000;
    const out = join(ctx.dir, 'drain.json');
    // Its own process group: cleanup kills drain.js together with the crowd and upstream it started.
    const child = new Child('bench/drain', process.execPath, [join(BENCH_DIST, 'drain.js'), '--count', String(count), '--out', out], {
      cwd: ROOT,
      detached: true,
      // Its temp directory goes inside this scenario's, which the suite removes whatever happens.
      env: { ...process.env, TMPDIR: ctx.dir },
    });
    const killGroup = (): void => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    onCleanup(killGroup);
    // drain.js bounds each of its steps; this bounds the whole of it.
    const limitMs = (3 * count) / 1000 * 1000 + 300_000;
    const timer = setTimeout(killGroup, limitMs);
    const how = await child.exited;
    clearTimeout(timer);
    if (how !== 'exit code 0') throw child.failure(`ended with ${how}`);
    const j = JSON.parse(readFileSync(out, 'utf8')) as DrainJson;
    const s = j.summary;
    const f = (n: number | null, d = 0) => (n === null ? '-' : n.toFixed(d));
    return {
      scenario: 'drain',
      title: `Draining a ${count.toLocaleString('en')}-request backlog`,
      method: `${count} POSTs stored while the target's upstream was down; then a uWS no-op upstream starts and crowd (concurrency 64) delivers them; the ceiling is a bare undici client (64 connections) sending the same requests to the same upstream.`,
      params: j.params,
      table: [
        ['system', 'messages', 'seconds', 'msg/s', 'ratio', 'CPU µs/msg'],
        ['bare undici client (ceiling)', `${s.ceiling.messages}`, f(s.ceiling.seconds, 2), f(s.ceiling.msg_per_s), '1.00', f(s.ceiling.cpu_us_per_msg, 1)],
        ['crowd drain', `${s.crowd.messages}`, f(s.crowd.seconds, 2), f(s.crowd.msg_per_s), f(s.ratio, 2), f(s.crowd.cpu_us_per_msg, 1)],
      ],
      goals: [
        {
          name: 'drain rate vs bare undici client',
          target: `>= ${TARGET} x`,
          measured: `${s.ratio.toFixed(2)} x${s.steady_ratio !== null ? ` (${s.steady_ratio.toFixed(2)} x after the first second)` : ''}`,
          met: s.ratio >= TARGET,
          note: s.ratio >= TARGET ? undefined : 'crowd reads and decodes each envelope, builds its headers and commits offsets on the same 2 cores the upstream uses',
        },
      ],
      charts: [
        {
          title: 'Drain rate',
          unit: 'msg/s',
          series: [
            { name: 'bare undici client', points: [{ x: `${count} msgs`, y: Math.round(s.ceiling.msg_per_s) }] },
            { name: 'crowd', points: [{ x: `${count} msgs`, y: Math.round(s.crowd.msg_per_s) }] },
          ],
        },
      ],
      data: j,
      shared: { drain_msg_per_s: s.crowd.msg_per_s },
    };
  },
};
