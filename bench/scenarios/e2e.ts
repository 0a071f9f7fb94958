/**
 * e2e: ingest and delivery at once. crowd takes POSTs at a fixed rate from the open-loop
 * client (bench/lib/open-loop.ts) and delivers them to a uWS no-op upstream through one http
 * target, on the same machine; the target's lag is sampled from `GET /status` every 500 ms.
 * A short search finds the highest offered rate at which the lag stays flat over the window.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runOpenLoop, type OpenLoopRun } from '../lib/open-loop';
import { Child, progress, sleep } from '../lib/proc';
import { BODY, CONTENT_TYPE, PATH, crowdStatus, startCrowd, startNoop, type CrowdStatus } from '../lib/servers';
import type { Scenario, ScenarioResult } from '../lib/types';
import { CONNECTIONS, clientProcesses, crowdMaxRate } from './latency';

const SAMPLE_MS = 500;
const CONCURRENCY = 64;
const START_FRACTION = 0.5;
/** The lag bound: this many seconds of the offered rate, and at least MIN_BOUND messages. */
const BOUND_SECONDS = 0.1;
const MIN_BOUND = 200;
const DRAIN_TIMEOUT_MS = 60_000;
/** The offered rate counts only when at least this share of it was acknowledged. */
const ACHIEVED_MIN = 0.95;
/** The client gives up sending this long after the window (the rate was not sustained anyway). */
const MAX_LATE_S = 0.5;
/** Early stop of a step that is clearly not flat (see overloaded). */
const EARLY_AFTER_S = 2;
const EARLY_SAMPLES = 3;
const EARLY_LAG_FACTOR = 10;
const EARLY_RATE_SHARE = 0.8;

interface Sample {
  /** Seconds since the measured window began (negative during the client's warm-up). */
  t: number;
  lag: number;
  delivered: number;
  /** The log's last offset: what crowd stored (acknowledged) so far. */
  stored: number;
  in_flight: number;
  state: string;
}

interface Step {
  rate: number;
  client: OpenLoopRun;
  samples: Sample[];
  window: Sample[];
  bound: number;
  lag_start: number;
  lag_end: number;
  lag_max: number;
  last_third_median: number;
  /** Theil-Sen slope of lag over the window (messages per second). */
  slope_per_s: number;
  growth_over_window: number;
  delivered_per_s: number;
  upstream_count: number;
  /** Why the step was stopped before the end of its window, if it was. */
  stopped_early: string | null;
  flat: boolean;
  why: string;
}

/** Theil-Sen slope of y over x: the median of the slopes between every two points (one stall does not tilt it). */
function slope(points: readonly { x: number; y: number }[]): number {
  const slopes: number[] = [];
  for (let i = 0; i < points.length; i++)
    for (let j = i + 1; j < points.length; j++) {
      const dx = points[j]!.x - points[i]!.x;
      if (dx > 0) slopes.push((points[j]!.y - points[i]!.y) / dx);
    }
  return slopes.length ? median(slopes) : 0;
}

function median(values: readonly number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/**
 * Why a step is stopped before the end of its window, or null: from EARLY_AFTER_S into it, on
 * EARLY_SAMPLES samples in a row, the lag above EARLY_LAG_FACTOR x the bound, or crowd storing
 * less than EARLY_RATE_SHARE of the offered rate over the second before the sample.
 */
function overloaded(samples: readonly Sample[], rate: number): string | null {
  const bound = Math.max(rate * BOUND_SECONDS, MIN_BOUND);
  const recent = samples.slice(-EARLY_SAMPLES);
  if (recent.length < EARLY_SAMPLES || recent[0]!.t < EARLY_AFTER_S) return null;
  const storedRate = (s: Sample): number | null => {
    const before = samples.filter((x) => x.t <= s.t - 0.9).pop();
    return before ? (s.stored - before.stored) / (s.t - before.t) : null;
  };
  if (recent.every((s) => s.lag > EARLY_LAG_FACTOR * bound)) return `lag above ${EARLY_LAG_FACTOR} x ${Math.round(bound)} for ${EARLY_SAMPLES} samples`;
  const rates = recent.map(storedRate);
  if (rates.every((r) => r !== null && r < EARLY_RATE_SHARE * rate)) return `crowd stored under ${EARLY_RATE_SHARE * 100}% of the offered rate for ${EARLY_SAMPLES} samples (${Math.round(rates[rates.length - 1]!)}/s)`;
  return null;
}

const roundRate = (r: number): number => Math.max(100, Math.round(r / 100) * 100);

/**
 * The next rate to try, or null when the search is done. With lo the highest flat rate and hi
 * the lowest rate that was not flat: after a rate that was not flat, 0.95 x what crowd
 * delivered per second in that step (while overloaded; with less to ingest it delivers at
 * least that), at most 0.9 x the rate, and above lo; after a flat rate, 1.25 x it, or when
 * hi is known, the lower of 1.15 x it and the middle of lo and hi. Done when lo and hi are within 3% (at least 100
 * req/s) or the next rate is that close to one already tried; while nothing was flat, it
 * goes on down by 15% at least.
 */
function nextRate(steps: readonly Step[]): number | null {
  const flat = steps.filter((s) => s.flat).map((s) => s.rate);
  const notFlat = steps.filter((s) => !s.flat).map((s) => s.rate);
  const lo = flat.length ? Math.max(...flat) : null;
  const hi = notFlat.length ? Math.min(...notFlat) : null;
  const last = steps[steps.length - 1]!;
  let next: number;
  if (!last.flat) {
    next = Math.min(0.95 * last.delivered_per_s, 0.9 * last.rate);
    if (lo !== null && next <= lo) next = (lo + last.rate) / 2;
    if (hi !== null && next >= hi) next = 0.9 * hi;
  } else {
    next = hi === null ? 1.25 * last.rate : Math.min(1.15 * last.rate, ((lo ?? last.rate) + hi) / 2);
  }
  next = roundRate(next);
  const close = Math.max(100, 0.03 * next);
  if (lo !== null && hi !== null && hi - lo <= close) return null;
  if (steps.some((s) => Math.abs(s.rate - next) < close)) {
    // Nothing flat yet: keep going down, by 15% at least.
    if (lo === null) return roundRate(0.85 * Math.min(...steps.map((s) => s.rate)));
    return null;
  }
  return next;
}

/** The no-op upstream's answered count (its stdin "stats" protocol). */
async function upstreamCount(noop: Child): Promise<number> {
  let count = -1;
  const got = noop.waitFor(
    (line) => {
      if (!line.startsWith('{"count"')) return false;
      count = (JSON.parse(line) as { count: number }).count;
      return true;
    },
    5_000,
    'answer "stats"',
  );
  noop.proc.stdin!.write('stats\n');
  await got;
  return count;
}

export const scenario: Scenario = {
  name: 'e2e',
  describe: 'ingest and delivery at once at a fixed rate: highest rate at which the target lag stays flat',
  async run(ctx): Promise<ScenarioResult> {
    const windowS = ctx.full ? 30 : 10;
    const maxSteps = ctx.full ? 5 : 3;
    const warmupSeconds = ctx.full ? 2 : 0.5;
    const max = await crowdMaxRate(ctx, 'e2e');
    const bodyFile = join(ctx.dir, 'e2e.body');
    writeFileSync(bodyFile, BODY);

    const noop = await startNoop({ count: true });
    const steps: Step[] = [];
    try {
      const crowd = await startCrowd(join(ctx.dir, 'crowd'), {
        routes: [{ name: 'leads', path: PATH, targets: ['upstream'] }],
        targets: [{ name: 'upstream', type: 'http', url: `http://127.0.0.1:${noop.port}`, concurrency: CONCURRENCY, retry: { base: '50ms', max: '500ms' } }],
      });
      try {
        const status = async (): Promise<CrowdStatus['targets'][number] & { stored: number }> => {
          if (!crowd.running) throw crowd.failure('exited during the run');
          const st = await crowdStatus(crowd);
          const t = st.targets[0];
          if (!t) throw new Error('crowd /status lists no target');
          return { ...t, stored: st.log.last_offset };
        };
        /** Waits until the target has nothing left to deliver (the previous step's backlog). */
        const drained = async (): Promise<void> => {
          const deadline = Date.now() + DRAIN_TIMEOUT_MS;
          for (;;) {
            const t = await status();
            if (t.lag === 0 && t.in_flight === 0) return;
            if (Date.now() > deadline) throw new Error(`the target's lag did not reach 0 within ${DRAIN_TIMEOUT_MS} ms (lag ${t.lag}, state ${t.state})`);
            await sleep(100);
          }
        };

        const tryRate = async (rate: number): Promise<Step> => {
          await drained();
          const before = await upstreamCount(noop);
          const processes = clientProcesses(rate);
          progress(`e2e: ${rate} req/s for ${windowS} s (${processes} client process(es))`);
          const samples: Sample[] = [];
          const spawnedAt = performance.now();
          let windowAt: number | null = null;
          let sampling = true;
          let samplerError: Error | null = null;
          let stoppedEarly: string | null = null;
          const abort = new AbortController();
          const sampler = (async () => {
            while (sampling) {
              const at = performance.now();
              const t = await status();
              // Seconds from the window's start; before it is known, from the spawn minus the warm-up.
              const origin = windowAt ?? spawnedAt + warmupSeconds * 1000;
              const sample = { t: (at - origin) / 1000, lag: t.lag, delivered: t.delivered, stored: t.stored, in_flight: t.in_flight, state: t.state };
              samples.push(sample);
              if (windowAt !== null && stoppedEarly === null) {
                const why = overloaded(samples, rate);
                if (why) {
                  stoppedEarly = `stopped at ${sample.t.toFixed(1)} s: ${why}`;
                  abort.abort();
                }
              }
              await sleep(Math.max(0, SAMPLE_MS - (performance.now() - at)));
            }
          })().catch((err: Error) => {
            samplerError = err;
          });
          let client: OpenLoopRun;
          try {
            client = await runOpenLoop({
              url: `http://127.0.0.1:${crowd.port}${PATH}`,
              rate,
              seconds: windowS,
              connections: CONNECTIONS,
              processes,
              bodyFile,
              contentType: CONTENT_TYPE,
              warmupSeconds,
              maxLateSeconds: MAX_LATE_S,
              signal: abort.signal,
              onMeasuring: () => {
                windowAt = performance.now();
                // Re-base what was sampled during the warm-up on the real start.
                const shift = (windowAt - (spawnedAt + warmupSeconds * 1000)) / 1000;
                for (const s of samples) s.t -= shift;
              },
            });
          } finally {
            sampling = false;
            await sampler;
          }
          if (samplerError) throw samplerError;
          const after = await upstreamCount(noop);
          const window = samples.filter((s) => s.t >= 0 && s.t <= windowS + 0.01);
          if (window.length < 4) throw new Error(`only ${window.length} lag samples in the ${windowS} s window at ${rate} req/s`);
          const bound = Math.max(rate * BOUND_SECONDS, MIN_BOUND);
          const third = window.slice(Math.floor((window.length * 2) / 3));
          const lastThirdMedian = median(third.map((s) => s.lag));
          const k = slope(window.map((s) => ({ x: s.t, y: s.lag })));
          const first = window[0]!;
          const last = window[window.length - 1]!;
          const growth = k * (last.t - first.t);
          const low = lastThirdMedian <= bound;
          const steady = growth <= bound;
          const lost = client.errors + client.unsent + client.unfinished;
          const kept = client.achieved_rps >= ACHIEVED_MIN * rate;
          const early = stoppedEarly as string | null;
          const flat = early === null && low && steady && lost === 0 && kept;
          const why = flat
            ? 'flat'
            : early !== null
              ? early
              : [!low ? `last-third median lag ${Math.round(lastThirdMedian)} > ${Math.round(bound)}` : '', !steady ? `lag grew ${Math.round(growth)} over the window (slope ${Math.round(k)}/s)` : '', lost ? `${lost} requests failed or never sent` : '', !kept ? `ingest achieved only ${Math.round(client.achieved_rps)} req/s` : '']
                .filter(Boolean)
                .join('; ');
          const step: Step = {
            rate,
            client,
            samples,
            window,
            bound,
            lag_start: first.lag,
            lag_end: last.lag,
            lag_max: Math.max(...window.map((s) => s.lag)),
            last_third_median: lastThirdMedian,
            slope_per_s: k,
            growth_over_window: growth,
            delivered_per_s: last.t > first.t ? (last.delivered - first.delivered) / (last.t - first.t) : 0,
            upstream_count: after - before,
            stopped_early: early,
            flat,
            why,
          };
          progress(`e2e: ${rate} req/s: achieved ${Math.round(client.achieved_rps)}, delivered ${Math.round(step.delivered_per_s)}/s, lag ${step.lag_start} -> ${step.lag_end} (max ${step.lag_max}): ${why}`);
          return step;
        };

        // The search: see nextRate.
        let rate = roundRate(START_FRACTION * max.rps);
        for (let i = 0; i < maxSteps; i++) {
          steps.push(await tryRate(rate));
          const next = nextRate(steps);
          if (next === null) break;
          rate = next;
        }
      } finally {
        await crowd.stop();
      }
    } finally {
      await noop.stop();
    }

    const flatRates = steps.filter((s) => s.flat).map((s) => s.rate);
    const best = flatRates.length ? Math.max(...flatRates) : 0;
    const lowestNotFlat = steps.filter((s) => !s.flat).map((s) => s.rate);
    const ceilingNote = lowestNotFlat.length ? Math.min(...lowestNotFlat) : null;
    const f = (n: number, d = 0) => n.toFixed(d);
    const table: string[][] = [['offered req/s', 'achieved req/s', 'delivered/s', 'lag start', 'lag end', 'lag max', 'last-third median lag (bound)', 'lag growth', 'flat', 'ack p99 ms']];
    for (const s of [...steps].sort((a, b) => a.rate - b.rate)) {
      table.push([`${s.rate}`, f(s.client.achieved_rps), f(s.delivered_per_s), `${s.lag_start}`, `${s.lag_end}`, `${s.lag_max}`, `${f(s.last_third_median)} (${f(s.bound)})`, f(s.growth_over_window), s.flat ? 'yes' : `no: ${s.why}`, s.client.latency_ms.p99.toFixed(2)]);
    }
    const sorted = [...steps].sort((a, b) => a.rate - b.rate);
    const lagChartPoints = (s: Step) => {
      const out: { x: string; y: number }[] = [];
      const every = windowS <= 10 ? 1 : 2;
      const lastT = s.window[s.window.length - 1]!.t;
      for (let sec = 0; sec <= windowS && sec <= lastT + 0.5; sec += every) {
        const near = s.window.reduce((a, x) => (Math.abs(x.t - sec) < Math.abs(a.t - sec) ? x : a));
        out.push({ x: `${sec}s`, y: near.lag });
      }
      return out;
    };
    return {
      scenario: 'e2e',
      title: 'Ingest and delivery at once: highest rate with a flat lag',
      method:
        `crowd with one route to one http target (concurrency ${CONCURRENCY}, retry base 50ms max 500ms) whose upstream is the uWS no-op server; ` +
        `the open-loop client (${CONNECTIONS} connections, bench/lib/open-loop.ts) posts at a fixed rate R for a ${windowS} s window after a ${warmupSeconds} s warm-up, ` +
        `while GET /status is polled every ${SAMPLE_MS} ms for the target's lag. The lag is flat when, over the window's samples, the median lag of the last third is at most ` +
        `B = max(${BOUND_SECONDS} s x R, ${MIN_BOUND}) messages, the Theil-Sen slope of lag over time (median of the pairwise slopes, so one stall does not tilt it) times the window length is at most B (it does not trend up), the client saw no errors and crowd acknowledged at least ${ACHIEVED_MIN * 100}% of R. ` +
        `Search (${maxSteps} steps at most): start at ${START_FRACTION * 100}% of crowd's max ingest rate (${Math.round(max.rps)} req/s, ${max.source}); after a rate that was not flat, try 0.95 x the delivered/s of that step (at most 0.9 x its rate, above the highest flat rate); after a flat one, x1.25 or, once a rate failed, the lower of x1.15 and the middle of the highest flat and lowest failed rate; ` +
        `each step starts with the previous backlog delivered. A step is stopped early (not flat) when, from ${EARLY_AFTER_S} s into its window, ${EARLY_SAMPLES} samples in a row show the lag above ${EARLY_LAG_FACTOR} x B or crowd storing under ${EARLY_RATE_SHARE * 100}% of R over the preceding second.`,
      params: { window_seconds: windowS, warmup_seconds: warmupSeconds, max_steps: maxSteps, sample_ms: SAMPLE_MS, concurrency: CONCURRENCY, retry: { base: '50ms', max: '500ms' }, connections: CONNECTIONS, max_rate: Math.round(max.rps), max_rate_source: max.source, bound: `max(${BOUND_SECONDS} s x R, ${MIN_BOUND})`, body: BODY },
      table,
      goals: [],
      charts: [
        {
          title: 'Offered, achieved (acked) and delivered rate',
          unit: 'req/s',
          series: [
            { name: 'offered', points: sorted.map((s) => ({ x: `${s.rate}/s`, y: s.rate })) },
            { name: 'achieved', points: sorted.map((s) => ({ x: `${s.rate}/s`, y: Math.round(s.client.achieved_rps) })) },
            { name: 'delivered', points: sorted.map((s) => ({ x: `${s.rate}/s`, y: Math.round(s.delivered_per_s) })) },
          ],
        },
        { title: 'Target lag over the window', unit: 'messages', series: sorted.map((s) => ({ name: `${s.rate}/s${s.flat ? '' : ' (not flat)'}`, points: lagChartPoints(s) })) },
      ],
      data: { max_rate: max, best_flat_rps: best, lowest_not_flat_rps: ceilingNote, steps },
      shared: { e2e_max_flat_rps: best },
    };
  },
};
