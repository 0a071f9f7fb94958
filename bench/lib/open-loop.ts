/**
 * An open-loop, constant-rate HTTP load generator that does not hide coordinated omission.
 *
 *   node dist/bench/lib/open-loop.js --url U --rate R --seconds S --connections C
 *        --body-file F --content-type T [--warmup-seconds W] [--warmup-requests N]
 *        [--max-late L] [--drain-timeout D]
 *
 * Request i (0-based) is due at start + i/R: its intended send time. It goes out on one of C
 * keep-alive connections (an undici Pool, pipelining 1, at most C requests in flight). When
 * no connection is free at its intended time it waits for one, and so do all the requests
 * due after it, and that wait counts: the latency recorded is the time its response ended
 * minus its intended send time, never minus the time it actually went out. A server that
 * stalls for 100 ms at 10000 req/s therefore shows about 1000 slow requests, not one.
 *
 * The scheduler is a 1 ms timer plus a check after every response, so a request may go out
 * up to about a millisecond after its intended time even when a connection is free (more when
 * this process is starved of CPU); that delay is in the latency too, and is reported on its
 * own as `send_delay_ms` (actual send time minus intended time, waits for a free connection
 * included). Two figures tell who made requests late: `conn_waits`, the requests that found
 * all C connections busy when they were due (the server answered too slowly), and
 * `loop_delay_ms`, how late the 1 ms timer fired (this client's event loop was busy or got
 * no CPU: the client, not the server, was the limit).
 *
 * Phases: (1) `--warmup-requests` (default max(C, 2000)) requests, C in flight, not recorded:
 * they open the C connections and let V8 compile the hot paths (without it the first second
 * of a cold client runs several times slower and its backlog shows as server latency);
 * (2) `--warmup-seconds` (default 1) at the rate R, not recorded; (3) S seconds at the rate R,
 * recorded (the line `{"event":"measuring"}` is printed when its first request goes out).
 * When the client is still more than `--max-late` seconds (default 2) behind its schedule at
 * the end of the window, it stops: the requests it never sent are counted as `unsent` and
 * recorded in the histogram at their lower bound (the time they had waited when it stopped);
 * requests still unanswered `--drain-timeout` seconds (default 10) later are `unfinished` and
 * recorded the same way. Errors and non-2xx answers are counted, not recorded. SIGTERM stops
 * the run at once: the line is printed with `"aborted":true`, what was not sent or not
 * answered counted in `unsent` and `unfinished` but not recorded.
 *
 * Output, one JSON line on stdout:
 *   {"rate":R,"seconds":S,"warmup_s":W,"connections":C,"scheduled":N,"sent":N,"ok":N,
 *    "errors":N,"statuses":{"200":N},"first_error":..,"unsent":N,"unfinished":N,"aborted":false,
 *    "achieved_rps":..,"send_rps":..,"elapsed_s":..,
 *    "latency_ms":{"p50":..,"p90":..,"p99":..,"p99.9":..,"max":..,"mean":..},
 *    "send_delay_ms":{...},"conn_waits":N,"loop_delay_ms":{...},"cpu_s":..,"hist":"<HdrHistogram, compressed base64, µs>"}
 * `achieved_rps` = 2xx responses / time from the window's start to the last response;
 * `send_rps` = requests sent / time from the window's start to the last send; `cpu_s` = this
 * process's CPU time (user + system) from the window's start. `hist` can be decoded and merged
 * with other processes' with hdr-histogram-js (`mergeHistograms`; `runOpenLoop` runs several
 * processes side by side and merges them). Exit 0 when it ran (whatever the statuses), 2 on
 * bad flags, 1 otherwise (e.g. every warm-up request failed: nothing listens at the URL).
 * With OPEN_LOOP_DEBUG=1 in the environment it prints each request sent over 20 ms late on stderr.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as hdr from 'hdr-histogram-js';
import { Pool, type Dispatcher } from 'undici';
import { BENCH_DIST, Child, ROOT } from './proc';

/** Largest latency the histogram holds (µs): 2 minutes. */
const HIGHEST_US = 120_000_000;
const TIMEOUT_MS = 10_000;
/** Default closed-loop warm-up: enough requests for V8 to compile this client's and undici's hot paths. */
const WARMUP_REQUESTS = 2000;
const DEBUG = process.env.OPEN_LOOP_DEBUG === '1';

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  'p99.9': number;
  max: number;
  mean: number;
}

export interface OpenLoopResult {
  rate: number;
  seconds: number;
  warmup_s: number;
  connections: number;
  scheduled: number;
  sent: number;
  ok: number;
  errors: number;
  statuses: Record<string, number>;
  first_error: string | null;
  unsent: number;
  unfinished: number;
  /** Stopped early by SIGTERM: unsent and unfinished requests are counted but not in the histogram. */
  aborted: boolean;
  achieved_rps: number;
  send_rps: number;
  elapsed_s: number;
  latency_ms: Percentiles;
  send_delay_ms: Percentiles;
  /** Measured requests that found all C connections busy when they were due. */
  conn_waits: number;
  /** How late the 1 ms scheduling timer fired (the client's own event-loop delay). */
  loop_delay_ms: Percentiles;
  cpu_s: number;
  hist: string;
}

export function newHistogram(): hdr.Histogram {
  return hdr.build({ bitBucketSize: 32, lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3, useWebAssembly: false });
}

/** Percentiles in ms of a histogram of µs. */
export function percentilesMs(h: hdr.Histogram): Percentiles {
  const ms = (us: number) => Math.round(us) / 1000;
  if (h.totalCount === 0) return { p50: 0, p90: 0, p99: 0, 'p99.9': 0, max: 0, mean: 0 };
  return {
    p50: ms(h.getValueAtPercentile(50)),
    p90: ms(h.getValueAtPercentile(90)),
    p99: ms(h.getValueAtPercentile(99)),
    'p99.9': ms(h.getValueAtPercentile(99.9)),
    max: ms(h.maxValue),
    mean: ms(h.mean),
  };
}

/** Merges the `hist` of several results (e.g. of client processes that ran side by side). */
export function mergeHistograms(encoded: readonly string[]): hdr.Histogram {
  const total = newHistogram();
  for (const e of encoded) total.add(hdr.decodeFromCompressedBase64(e, 32, false));
  return total;
}

export interface OpenLoopOptions {
  url: string;
  /** Total rate over all processes (req/s). */
  rate: number;
  seconds: number;
  /** Total connections over all processes. */
  connections: number;
  bodyFile: string;
  contentType: string;
  /** Client processes side by side, each at rate/processes with connections/processes (default 1). */
  processes?: number;
  warmupSeconds?: number;
  /** Seconds past the window after which requests not yet sent are given up (default 2). */
  maxLateSeconds?: number;
  /** Aborting stops the client processes early (SIGTERM); they still report what they did. */
  signal?: AbortSignal;
  /** Called once, when the first process sends its first measured request (the warm-up is over). */
  onMeasuring?: () => void;
}

/** The figures of one or more client processes run side by side, their histograms merged. */
export interface OpenLoopRun {
  rate: number;
  processes: number;
  connections: number;
  seconds: number;
  scheduled: number;
  sent: number;
  ok: number;
  errors: number;
  /** Never sent: the client was more than --max-late behind when the window ended. */
  unsent: number;
  /** Sent but unanswered at the end. */
  unfinished: number;
  aborted: boolean;
  first_error: string | null;
  statuses: Record<string, number>;
  /** Sum of the processes' achieved rates. */
  achieved_rps: number;
  latency_ms: Percentiles;
  /** The worst process's send-delay percentiles (how late requests left this client, waits for a connection included). */
  send_delay_ms: Percentiles;
  /** Requests that found every connection busy when they were due (the server was slow to answer). */
  conn_waits: number;
  /** The worst process's timer lateness (the client's own event-loop delay: CPU starvation or too much work). */
  loop_delay_ms: Percentiles;
  /** CPU seconds of all client processes during the measured part, and per measured request (µs). */
  cpu_s: number;
  cpu_us_per_req: number;
  per_process: Omit<OpenLoopResult, 'hist'>[];
}

/**
 * Runs `processes` open-loop client processes at once (tracked, killed on cleanup) and merges
 * their results. Rejects when one fails or prints no result.
 */
export async function runOpenLoop(o: OpenLoopOptions): Promise<OpenLoopRun> {
  const n = Math.max(1, o.processes ?? 1);
  const warmup = o.warmupSeconds ?? 1;
  let anyMeasuring = false;
  const kids = Array.from({ length: n }, (_, k) => {
    const args = [
      join(BENCH_DIST, 'lib', 'open-loop.js'),
      '--url', o.url,
      '--rate', String(o.rate / n),
      '--seconds', String(o.seconds),
      '--connections', String(Math.max(1, Math.round(o.connections / n))),
      '--body-file', o.bodyFile,
      '--content-type', o.contentType,
      '--warmup-seconds', String(warmup),
      '--max-late', String(o.maxLateSeconds ?? 2),
    ];
    const child = new Child(`open-loop client ${k + 1}/${n}`, process.execPath, args, { cwd: ROOT });
    let line: string | null = null;
    const got = child.waitFor((l) => {
      if (!l.startsWith('{"rate"')) return false;
      line = l;
      return true;
    }, (warmup + o.seconds + 60) * 1000, 'print its result');
    child
      .waitFor((l) => l === '{"event":"measuring"}', (warmup + 60) * 1000, 'start measuring')
      .then(() => {
        if (!anyMeasuring) {
          anyMeasuring = true;
          o.onMeasuring?.();
        }
      })
      .catch(() => undefined); // a failure shows in `got`
    return { child, got, line: () => line };
  });
  const onAbort = () => {
    for (const k of kids) if (k.child.running) k.child.proc.kill('SIGTERM');
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.all(kids.map((k) => k.got));
    await Promise.all(kids.map((k) => k.child.exited));
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    for (const k of kids) if (k.child.running) k.child.proc.kill('SIGKILL');
  }
  const results = kids.map((k) => JSON.parse(k.line()!) as OpenLoopResult);
  const merged = mergeHistograms(results.map((r) => r.hist));
  const sum = (f: (r: OpenLoopResult) => number) => results.reduce((a, r) => a + f(r), 0);
  const statuses: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.statuses)) statuses[k] = (statuses[k] ?? 0) + v;
  const worst = results.reduce((a, r) => (r.send_delay_ms.p99 > a.send_delay_ms.p99 ? r : a));
  const sent = sum((r) => r.sent);
  return {
    rate: o.rate,
    processes: n,
    connections: sum((r) => r.connections),
    seconds: o.seconds,
    scheduled: sum((r) => r.scheduled),
    sent,
    ok: sum((r) => r.ok),
    errors: sum((r) => r.errors),
    unsent: sum((r) => r.unsent),
    unfinished: sum((r) => r.unfinished),
    aborted: results.some((r) => r.aborted),
    first_error: results.find((r) => r.first_error)?.first_error ?? null,
    statuses,
    achieved_rps: sum((r) => r.achieved_rps),
    latency_ms: percentilesMs(merged),
    send_delay_ms: worst.send_delay_ms,
    conn_waits: sum((r) => r.conn_waits),
    loop_delay_ms: results.reduce((a, r) => (r.loop_delay_ms.p99 > a.loop_delay_ms.p99 ? r : a)).loop_delay_ms,
    cpu_s: sum((r) => r.cpu_s),
    cpu_us_per_req: sent > 0 ? (sum((r) => r.cpu_s) / sent) * 1e6 : 0,
    per_process: results.map(({ hist: _hist, ...rest }) => rest),
  };
}

function usage(message: string): never {
  process.stderr.write(
    `open-loop: ${message}\nusage: node dist/bench/lib/open-loop.js --url U --rate R --seconds S --connections C --body-file F --content-type T [--warmup-seconds W] [--warmup-requests N] [--drain-timeout S]\n`,
  );
  process.exit(2);
}

async function main(): Promise<void> {
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        rate: { type: 'string' },
        seconds: { type: 'string' },
        connections: { type: 'string', default: '64' },
        'body-file': { type: 'string' },
        'content-type': { type: 'string', default: 'application/octet-stream' },
        'warmup-requests': { type: 'string' },
        'warmup-seconds': { type: 'string', default: '1' },
        'max-late': { type: 'string', default: '2' },
        'drain-timeout': { type: 'string', default: '10' },
      },
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (!values.url || !values.rate || !values.seconds || !values['body-file']) usage('--url, --rate, --seconds and --body-file are required');
  const url = new URL(values.url);
  const rate = Number(values.rate);
  const seconds = Number(values.seconds);
  const connections = Number(values.connections);
  const warmup = values['warmup-requests'] === undefined ? Math.max(connections, WARMUP_REQUESTS) : Number(values['warmup-requests']);
  const drainTimeoutS = Number(values['drain-timeout']);
  const warmupS = Number(values['warmup-seconds']);
  const maxLateS = Number(values['max-late']);
  if (!(rate > 0) || !(seconds > 0)) usage('--rate and --seconds must be > 0');
  if (!Number.isInteger(connections) || connections < 1) usage('--connections must be a whole number >= 1');
  if (!Number.isInteger(warmup) || warmup < 0) usage('--warmup-requests must be a whole number >= 0');
  if (!(drainTimeoutS > 0)) usage('--drain-timeout must be > 0');
  if (!(warmupS >= 0)) usage('--warmup-seconds must be >= 0');
  if (!(maxLateS >= 0)) usage('--max-late must be >= 0');
  const body = readFileSync(values['body-file']);
  const contentType = values['content-type']!;
  const path = url.pathname + url.search;
  const headers = { 'content-type': contentType };

  // SIGTERM (the harness stopping a step early): stop at once and report what was done.
  let aborted = false;
  const abortedP = new Promise<boolean>((res) =>
    process.once('SIGTERM', () => {
      aborted = true;
      res(true);
    }),
  );

  const pool = new Pool(url.origin, {
    connections,
    pipelining: 1,
    connectTimeout: TIMEOUT_MS,
    headersTimeout: TIMEOUT_MS,
    bodyTimeout: TIMEOUT_MS,
    keepAliveTimeout: 60_000,
    keepAliveMaxTimeout: 600_000,
  });
  const opts: Dispatcher.DispatchOptions = { method: 'POST', path, headers, body };

  /** One request through the pool; `done` gets the status (0 on an error) and the error. */
  const send = (done: (status: number, err: Error | null) => void): void => {
    let status = 0;
    pool.dispatch(opts, {
      onConnect() {
        // nothing to set up
      },
      onHeaders(statusCode) {
        status = statusCode;
        return true;
      },
      onData() {
        return true; // the body is discarded
      },
      onComplete() {
        done(status, null);
      },
      onError(err) {
        done(0, err);
      },
    });
  };

  // Warm-up, nothing recorded: C requests at once open the C connections, then the rest
  // keep C in flight (closed loop).
  let warmFailures = 0;
  let warmError: Error | null = null;
  if (warmup > 0)
    await new Promise<void>((res) => {
      let started = 0;
      let done = 0;
      const one = (): void => {
        started++;
        send((st, err) => {
          if (err || st < 200 || st >= 300) {
            warmFailures++;
            warmError ??= err ?? new Error(`status ${st}`);
          }
          if (++done === warmup || aborted) res();
          else if (started < warmup) one();
        });
      };
      for (let k = 0; k < Math.min(warmup, connections); k++) one();
    });
  if (warmup > 0 && warmFailures >= warmup) throw new Error(`every warm-up request to ${url.href} failed: ${(warmError as Error | null)?.message}`);

  const latency = newHistogram();
  const sendDelay = newHistogram();
  /** How late this process's 1 ms timer fired (µs): its event loop was busy or got no CPU. */
  const loopDelay = newHistogram();
  const us = (ms: number) => Math.min(HIGHEST_US, Math.max(1, Math.round(ms * 1000)));
  // Requests 0 .. warm-1 are the warm-up at the same rate (not recorded); warm .. total-1 are measured.
  const warm = Math.round(rate * warmupS);
  const scheduled = Math.max(1, Math.round(rate * seconds));
  const total = warm + scheduled;
  const intervalMs = 1000 / rate;
  const statuses: Record<string, number> = {};
  /** Intended send times of the measured requests in flight, by index. */
  const pending = new Map<number, number>();
  let next = 0; // index of the next request to send
  let inFlight = 0;
  /** Requests below this index found every connection busy when they were due. */
  let blockedBelow = 0;
  let connWaits = 0;
  let completed = 0; // measured requests answered or failed
  let unsent = 0;
  let ok = 0;
  let errors = 0;
  let firstError: string | null = null;
  let lastSendAt = 0;
  let lastResponseAt = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((res) => (finish = res));

  const start = performance.now();
  const measureStart = start + warm * intervalMs;
  const stopAt = measureStart + (seconds + maxLateS) * 1000;
  let cpu0: NodeJS.CpuUsage | null = warm === 0 ? process.cpuUsage() : null;

  const pump = (): void => {
    if (stopped) return;
    const now = performance.now();
    // Every request whose intended time has come, as far as free connections allow.
    const due = Math.min(total, Math.floor((now - start) / intervalMs) + 1);
    if (inFlight >= connections && due > blockedBelow) blockedBelow = due;
    while (next < due && inFlight < connections) {
      const i = next++;
      const intended = start + i * intervalMs;
      const measured = i >= warm;
      inFlight++;
      if (measured) {
        if (i === warm) {
          cpu0 = process.cpuUsage();
          process.stdout.write('{"event":"measuring"}\n');
        }
        sendDelay.recordValue(us(now - intended));
        if (i < blockedBelow) connWaits++;
        lastSendAt = now;
        pending.set(i, intended);
        if (DEBUG && now - intended > 20) process.stderr.write(`late ${i} by ${(now - intended).toFixed(1)} ms at ${(now - measureStart).toFixed(0)} ms, ${inFlight} in flight\n`);
      }
      send((st, err) => {
        if (inFlight-- === connections && next < total) {
          // Every connection was busy: whatever is due by now waited for this one.
          const d = Math.min(total, Math.floor((performance.now() - start) / intervalMs) + 1);
          if (d > blockedBelow) blockedBelow = d;
        }
        if (measured && pending.delete(i)) {
          const t = performance.now();
          completed++;
          lastResponseAt = t;
          if (err) {
            errors++;
            firstError ??= `${(err as Error & { code?: string }).code ?? ''} ${err.message}`.trim();
          } else {
            statuses[st] = (statuses[st] ?? 0) + 1;
            if (st >= 200 && st < 300) {
              ok++;
              latency.recordValue(us(t - intended));
            } else errors++;
          }
          if (completed + unsent === scheduled) finish();
        }
        if (next < total) pump();
      });
    }
  };
  let tickDue = 0;
  const tick = (): void => {
    const late = performance.now() - tickDue;
    if (tickDue > 0 && performance.now() >= measureStart) loopDelay.recordValue(us(Math.max(0.001, late)));
    pump();
    if (next < total && performance.now() >= stopAt) {
      // Too far behind: what was never sent counts at its lower bound, the wait so far.
      stopped = true;
      const now = performance.now();
      for (let i = Math.max(next, warm); i < total; i++) {
        const wait = now - (start + i * intervalMs);
        if (wait > 0) latency.recordValue(us(wait));
        unsent++;
      }
      next = total;
      if (completed + unsent === scheduled) finish();
    }
    tickDue = performance.now() + 1;
    timer = next < total ? setTimeout(tick, 1) : null;
  };
  tick();

  const timedOut = await Promise.race([
    finished.then(() => false),
    abortedP,
    new Promise<boolean>((res) => setTimeout(() => res(true), stopAt - performance.now() + drainTimeoutS * 1000).unref()),
  ]);
  stopped = true;
  if (timer) clearTimeout(timer);
  const end = performance.now();
  if (aborted) {
    // Not sent: counted, not recorded (the run was cut short, not the server's doing).
    unsent += total - Math.max(next, warm);
    next = total;
  } else {
    // Still unanswered at the deadline: they count at their lower bound too.
    for (const intended of pending.values()) latency.recordValue(us(end - intended));
  }
  const cpu = process.cpuUsage(cpu0 ?? undefined);
  const elapsedS = Math.max(1e-3, ((timedOut ? end : lastResponseAt) - measureStart) / 1000);
  const sent = Math.max(0, Math.min(next, total) - warm - unsent);
  const result: OpenLoopResult = {
    rate,
    seconds,
    warmup_s: warmupS,
    connections,
    scheduled,
    sent,
    ok,
    errors,
    statuses,
    first_error: firstError,
    unsent,
    unfinished: pending.size,
    aborted,
    achieved_rps: ok / elapsedS,
    send_rps: sent / Math.max(1e-3, (lastSendAt - measureStart) / 1000),
    elapsed_s: elapsedS,
    latency_ms: percentilesMs(latency),
    send_delay_ms: percentilesMs(sendDelay),
    conn_waits: connWaits,
    loop_delay_ms: percentilesMs(loopDelay),
    cpu_s: cpu0 ? (cpu.user + cpu.system) / 1e6 : 0,
    hist: hdr.encodeIntoCompressedBase64(latency),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await pool.destroy().catch(() => undefined);
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (err: Error) => {
      process.stderr.write(`open-loop: ${err.message}\n`);
      process.exit(1);
    },
  );
}
