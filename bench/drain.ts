/**
 * The drain benchmark: how fast crowd delivers a backlog once its upstream comes back, against
 * the ceiling of a bare undici client sending the same requests to the same no-op upstream,
 * one after the other on the same machine. The figure that matters is the ratio crowd /
 * ceiling msg/s: on a small, shared machine absolute numbers move from run to run, the ratio
 * much less.
 *
 *   node dist/bench/drain.js [--count N | --large] [--concurrency C] [--preload-connections N] [--cpu-prof DIR]
 *
 * 1. Preload: a fresh crowd (`bin/crowd start`, loopback, ports picked by the kernel) with one
 *    route /leads -> one http target whose port nothing listens on yet; a bare undici client
 *    (dist/bench/undici-client.js) POSTs N requests, every answer must be 200.
 * 2. Drain: the uWS no-op upstream (dist/bench/noop-server.js --count) starts on that port;
 *    crowd's admin `GET /status` is polled every POLL_MS until the target's lag is 0.
 * 3. Ceiling: crowd stopped, the same client sends the same N requests, with the headers crowd
 *    adds, to the same upstream with `concurrency` connections.
 *
 * Prints a table on stdout (progress on stderr) and writes bench/results/drain.json. Exits 0
 * whatever the ratio (a benchmark is not a test); non-zero only when something failed to run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { cpuSeconds, freePort, git } from './lib/proc';
import { machine } from './lib/report';

const ROOT = resolve(__dirname, '..', '..');
const CROWD_BIN = join(ROOT, 'bin', 'crowd');
const CROWD_MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const NOOP_SERVER = join(__dirname, 'noop-server.js');
const CLIENT = join(__dirname, 'undici-client.js');
const RESULTS_FILE = join(ROOT, 'bench', 'results', 'drain.json');

const PATH = '/leads';
/** The same request as the ingest benchmark; bench/undici-client.ts sends exactly this. */
const BODY = '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}';
const CONTENT_TYPE = 'application/json';
const TARGET_NAME = 'upstream';
/** crowd / ceiling msg/s we hold ourselves to. */
const TARGET_RATIO = 0.8;
const DEFAULT_COUNT = 200_000;
const LARGE_COUNT = 1_000_000;
/** Short backoff, so that the upstream is found again quickly once it listens. */
const RETRY_BASE = '50ms';
const RETRY_MAX = '500ms';
/** Far above what N small requests take (about 300 bytes each). */
const LOG_MAX_BYTES = '8GiB';
/** The first part of the drain left out of the steady rate: the breaker's probe delay, ramp-up. */
const STEADY_SKIP_MS = 1000;
const POLL_MS = 100;
/** CPU busy fraction before the start above which the run is flagged as noisy. */
const BUSY_WARNING = 0.2;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
const SETTLE_TIMEOUT_MS = 30_000;
/** Output lines kept per child process, to explain a failure. */
const TAIL_LINES = 40;

const USAGE = `usage: node dist/bench/drain.js [options]
  --count N                 requests to preload and drain (default ${DEFAULT_COUNT})
  --large                   the same as --count ${LARGE_COUNT}
  --concurrency C           the target's concurrency, and the ceiling client's connections (default 64)
  --preload-connections N   connections of the client that preloads crowd (default 64)
  --cpu-prof DIR            run crowd under node --cpu-prof, profiles written to DIR when it stops
  --out FILE                where the results JSON goes (default bench/results/drain.json)`;

interface Params {
  readonly count: number;
  readonly concurrency: number;
  readonly preloadConnections: number;
  readonly cpuProfDir: string | null;
  /** Where the results JSON goes (default bench/results/drain.json). */
  readonly out: string;
}

/** The JSON line bench/undici-client.ts prints. */
interface ClientResult {
  requests: number;
  ok: number;
  statuses: Record<string, number>;
  errors: number;
  first_error: string | null;
  seconds: number;
  msg_per_s: number;
  cpu_user_s: number;
  cpu_system_s: number;
  timed_out: boolean;
  undici: string;
}

/** What the no-op upstream answers to "stats" (wall-clock milliseconds). */
interface UpstreamStats {
  count: number;
  first_at: number | null;
  last_at: number | null;
}

interface TargetStatus {
  name: string;
  state: string;
  offset: number;
  lag: number;
  in_flight: number;
  retrying: number;
  dead_letters: number;
  accepted: number;
  delivered: number;
}

interface CrowdStatus {
  version?: string;
  ingest: { port: number | null };
  log: { first_offset: number; last_offset: number; durable_offset: number; pending_writes: number; bytes: number };
  targets: TargetStatus[];
}

/** One poll of crowd's /status during the drain; t_ms from the upstream's start. */
interface Sample {
  t_ms: number;
  delivered: number;
  lag: number;
  in_flight: number;
  retrying: number;
  state: string;
}

// ---------------------------------------------------------------------------------------------
// Processes and temp files: everything started is tracked, so any way out can clean it up.

const children = new Set<ChildProcess>();
let tempRoot: string | null = null;

function track(proc: ChildProcess): ChildProcess {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

/** Synchronous, so it also works from the 'exit' handler and from signal handlers. */
function cleanup(): void {
  for (const proc of children) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }
  children.clear();
  if (tempRoot) rmSync(tempRoot, { recursive: true, force: true });
  tempRoot = null;
}

process.on('exit', cleanup);
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}: stopping\n`);
    cleanup();
    process.exit(code);
  });
}

function progress(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A child process with the tail of its output for diagnostics; stdout lines go to `onLine`. */
class Server {
  readonly tail: string[] = [];
  readonly exited: Promise<string>;
  port = 0;
  adminPort = 0;
  private readonly proc: ChildProcess;
  private readonly lineWaiters: ((line: string) => boolean)[] = [];

  constructor(
    readonly name: string,
    args: string[],
    cwd: string,
    /** The no-op server exits when its stdin closes and takes commands on it; crowd does not read stdin. */
    stdin: 'pipe' | 'ignore',
  ) {
    this.proc = track(spawn(process.execPath, args, { cwd, stdio: [stdin, 'pipe', 'pipe'] }));
    this.exited = new Promise((res) => this.proc.once('exit', (code, signal) => res(signal ?? `exit code ${code}`)));
    // Both streams are always drained: a child blocked on a full pipe would skew the run.
    createInterface({ input: this.proc.stderr! }).on('line', (line) => this.keep(line));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.keep(line);
      const i = this.lineWaiters.findIndex((accept) => accept(line));
      if (i >= 0) this.lineWaiters.splice(i, 1);
    });
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** CPU seconds the process used so far (all its threads); null where /proc cannot tell. */
  cpuSeconds(): number | null {
    return this.proc.pid === undefined ? null : cpuSeconds(this.proc.pid);
  }

  /** Resolves with the first stdout line `accept` takes; rejects on timeout or if the process exits first. */
  nextLine(accept: (line: string) => boolean, timeoutMs: number, what: string): Promise<void> {
    return new Promise((res, rej) => {
      let settled = false;
      const timer = setTimeout(() => finish(this.failure(`${what}: nothing within ${timeoutMs} ms`)), timeoutMs);
      const finish = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) rej(err);
        else res();
      };
      this.lineWaiters.push((line) => {
        if (settled || !accept(line)) return false;
        finish();
        return true;
      });
      void this.exited.then((how) => finish(this.failure(`exited (${how}) while waiting: ${what}`)));
    });
  }

  write(line: string): void {
    this.proc.stdin!.write(`${line}\n`);
  }

  /** SIGTERM (crowd flushes and exits 0), SIGKILL if it hangs; resolves with how it ended. */
  async stop(): Promise<string> {
    if (!this.running) return this.exited;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const how = await this.exited;
    clearTimeout(timer);
    return how;
  }

  failure(what: string): Error {
    return new Error(`${this.name} ${what}; its last output:\n${this.tail.join('\n') || '(none)'}`);
  }

  private keep(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
  }
}

const minus = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : a - b);
const perMessageUs = (cpuS: number | null, n: number): number | null => (cpuS === null ? null : (cpuS * 1e6) / n);

async function startUpstream(port: number): Promise<Server> {
  const server = new Server('no-op upstream', [NOOP_SERVER, '--port', `${port}`, '--count'], ROOT, 'pipe');
  await server.nextLine(
    (line) => {
      if (!/^\d+$/.test(line)) return false;
      server.port = Number(line);
      return true;
    },
    START_TIMEOUT_MS,
    `listening on port ${port}`,
  );
  if (server.port !== port) throw server.failure(`listens on port ${server.port}, not on ${port}`);
  return server;
}

async function upstreamStats(upstream: Server): Promise<UpstreamStats> {
  let stats: UpstreamStats | null = null;
  const got = upstream.nextLine(
    (line) => {
      if (!line.startsWith('{"count"')) return false;
      stats = JSON.parse(line) as UpstreamStats;
      return true;
    },
    5000,
    'its request count',
  );
  upstream.write('stats');
  await got;
  return stats!;
}

async function startCrowd(dir: string, upstreamPort: number, p: Params): Promise<Server> {
  mkdirSync(dir);
  const configFile = join(dir, 'crowd.json');
  const config = {
    server: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: { dir: join(dir, 'data'), max_bytes: LOG_MAX_BYTES },
    routes: [{ name: 'leads', path: PATH, targets: [TARGET_NAME] }],
    targets: [
      {
        name: TARGET_NAME,
        type: 'http',
        url: `http://127.0.0.1:${upstreamPort}`,
        concurrency: p.concurrency,
        retry: { base: RETRY_BASE, max: RETRY_MAX },
      },
    ],
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  const nodeArgs = p.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${p.cpuProfDir}`] : [];
  const server = new Server('crowd', [...nodeArgs, CROWD_BIN, 'start', '-c', configFile], dir, 'ignore');
  await server.nextLine(
    (line) => {
      if (!line.includes('"event":"listening"')) return false;
      const j = JSON.parse(line) as { port: number; admin_port: number };
      server.port = j.port;
      server.adminPort = j.admin_port;
      return true;
    },
    START_TIMEOUT_MS,
    'listening',
  );
  return server;
}

// ---------------------------------------------------------------------------------------------
// The client (preload and ceiling), in its own process.

function runClient(label: string, args: string[], deadlineS: number): Promise<ClientResult> {
  const argv = [CLIENT, ...args, '--deadline', `${deadlineS}`];
  return new Promise((res, rej) => {
    const proc = track(spawn(process.execPath, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // The client stops itself at the deadline; this only guards against a hung one.
    const timer = setTimeout(() => proc.kill('SIGKILL'), (deadlineS + 30) * 1000);
    proc.once('error', (err) => {
      clearTimeout(timer);
      rej(new Error(`cannot run the ${label} client: ${err.message}`));
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
      const r = line ? (JSON.parse(line) as ClientResult) : null;
      if (r?.timed_out) {
        rej(new Error(`the ${label} did not finish within ${deadlineS} s: ${r.requests} of the requests answered (${r.ok} 2xx)`));
        return;
      }
      if (code !== 0 || !r) {
        rej(new Error(`the ${label} client (node ${argv.join(' ')}) failed (${signal ?? `exit code ${code}`}):\n${stderr}${stdout}`));
        return;
      }
      res(r);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// crowd's admin API

async function crowdStatus(crowd: Server): Promise<CrowdStatus> {
  const url = `http://127.0.0.1:${crowd.adminPort}/status`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    // fetch's own message is only "fetch failed"; the reason is in its cause.
    const cause = (err as Error).cause as Error | undefined;
    throw new Error(`GET ${url} failed: ${cause?.message ?? (err as Error).message}`);
  }
  if (!res.ok) throw new Error(`GET /status on crowd's admin port answered ${res.status}`);
  const s = (await res.json()) as CrowdStatus;
  // The figures only mean something if they come from the crowd we started.
  if (s.ingest.port !== crowd.port) throw crowd.failure(`admin port ${crowd.adminPort} answered for ingest port ${s.ingest.port}, not ${crowd.port}`);
  if (s.targets?.[0]?.name !== TARGET_NAME) throw crowd.failure(`/status has no target "${TARGET_NAME}"`);
  return s;
}

/** Waits until every write is flushed and the target has counted all `count` preloaded requests. */
async function settledStatus(crowd: Server, count: number): Promise<CrowdStatus> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  let why = '';
  for (;;) {
    if (!crowd.running) throw crowd.failure('exited while its log was being read');
    let s: CrowdStatus | null = null;
    try {
      s = await crowdStatus(crowd);
    } catch (err) {
      // Right after the preload the machine is still busy closing sockets: retry until the deadline.
      why = (err as Error).message;
    }
    if (s) {
      const { last_offset, durable_offset, pending_writes } = s.log;
      const t = s.targets[0]!;
      if (pending_writes === 0 && durable_offset === last_offset && t.accepted === count) return s;
      why = `last ${last_offset}, durable ${durable_offset}, pending ${pending_writes}, target accepted ${t.accepted} of ${count}`;
    }
    if (Date.now() > deadline) throw new Error(`crowd did not settle within ${SETTLE_TIMEOUT_MS} ms after the preload (${why})`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// The three steps

interface Preload {
  client: ClientResult;
  stored: number;
  log_bytes: number;
  last_offset: number;
  /** The target while its upstream was down, just before the upstream started. */
  target_before: TargetStatus;
}

async function preload(crowd: Server, p: Params): Promise<Preload> {
  // Bounded: far more than crowd needs at a few thousand requests per second.
  const deadlineS = Math.ceil(60 + p.count / 1000);
  progress(`preload: ${p.count} requests over ${p.preloadConnections} connections (at most ${deadlineS} s)`);
  const client = await runClient('preload', ['--url', `http://127.0.0.1:${crowd.port}${PATH}`, '--count', `${p.count}`, '--connections', `${p.preloadConnections}`], deadlineS);
  if (!crowd.running) throw crowd.failure('exited during the preload');
  const other = Object.entries(client.statuses).filter(([status]) => status !== '200');
  if (client.ok !== p.count || client.errors > 0 || other.length > 0) {
    throw new Error(
      `preload: ${client.statuses['200'] ?? 0} of ${p.count} requests answered 200` +
        (other.length ? `; other statuses: ${other.map(([s, n]) => `${n} x ${s}`).join(', ')}` : '') +
        (client.errors ? `; ${client.errors} errors, the first: ${client.first_error}` : ''),
    );
  }
  const s = await settledStatus(crowd, p.count);
  const t = s.targets[0]!;
  if (s.log.last_offset - s.log.first_offset + 1 !== p.count) throw new Error(`preload: the log holds offsets ${s.log.first_offset}-${s.log.last_offset}, expected ${p.count} entries`);
  if (t.lag !== p.count || t.delivered !== 0) throw new Error(`preload: the target shows lag ${t.lag} and ${t.delivered} delivered, expected lag ${p.count} and nothing delivered (does something listen on its port?)`);
  progress(`preload: ${client.ok} stored in ${client.seconds.toFixed(1)} s (${client.msg_per_s.toFixed(0)} req/s); target ${t.state}, ${t.retrying} retrying`);
  return { client, stored: s.log.last_offset - s.log.first_offset + 1, log_bytes: s.log.bytes, last_offset: s.log.last_offset, target_before: t };
}

interface Drain {
  /** Upstream listening (wall clock, ms) -> lag 0 seen by the poll. */
  upstream_started_at: number;
  seconds: number;
  msg_per_s: number;
  /** delivered / seconds between the first poll at or after STEADY_SKIP_MS and the end; null when too short. */
  steady_msg_per_s: number | null;
  steady_window_s: number | null;
  /** CPU seconds of crowd and of the upstream from the upstream's start to lag 0, and per message. */
  crowd_cpu_s: number | null;
  crowd_cpu_us_per_msg: number | null;
  upstream_cpu_s: number | null;
  upstream_cpu_us_per_msg: number | null;
  /** The upstream's own clock: its first and last answer, from its start. */
  first_delivery_ms: number | null;
  last_delivery_ms: number | null;
  upstream_received: number;
  delivered: number;
  dead_letters: number;
  polls: number;
  samples: Sample[];
}

async function drain(crowd: Server, upstreamPort: number, p: Params): Promise<{ drain: Drain; upstream: Server }> {
  // Bounded: at 1000 msg/s even a slow machine is done.
  const deadlineMs = (p.count / 1000 + 60) * 1000;
  progress(`drain: starting the upstream on port ${upstreamPort}; waiting for lag 0 (at most ${(deadlineMs / 1000).toFixed(0)} s)`);
  const upstream = await startUpstream(upstreamPort);
  const startedAt = Date.now();
  const crowdCpu0 = crowd.cpuSeconds();
  const upstreamCpu0 = upstream.cpuSeconds();
  const t0 = performance.now();
  const samples: Sample[] = [];
  let last: TargetStatus | null = null;
  for (let poll = 1; ; poll++) {
    const due = t0 + poll * POLL_MS;
    const now = performance.now();
    if (due > now) await sleep(due - now);
    if (!crowd.running) throw crowd.failure('exited during the drain');
    if (!upstream.running) throw upstream.failure('exited during the drain');
    const s = await crowdStatus(crowd);
    const t = (last = s.targets[0]!);
    const tMs = performance.now() - t0;
    samples.push({ t_ms: Math.round(tMs), delivered: t.delivered, lag: t.lag, in_flight: t.in_flight, retrying: t.retrying, state: t.state });
    if (t.lag === 0) break;
    if (tMs > deadlineMs) throw new Error(`drain: lag still ${t.lag} (${t.delivered} delivered, ${t.dead_letters} dead letters, target ${t.state}) after ${(tMs / 1000).toFixed(0)} s`);
    if (poll % Math.round(5000 / POLL_MS) === 0) progress(`drain: ${(tMs / 1000).toFixed(0)} s, ${t.delivered} delivered, lag ${t.lag}, target ${t.state}`);
  }
  const crowdCpu = minus(crowd.cpuSeconds(), crowdCpu0);
  const upstreamCpu = minus(upstream.cpuSeconds(), upstreamCpu0);
  const end = samples[samples.length - 1]!;
  const seconds = end.t_ms / 1000;
  const stats = await upstreamStats(upstream);
  let steady: number | null = null;
  let steadyWindow: number | null = null;
  const from = samples.find((x) => x.t_ms >= STEADY_SKIP_MS);
  if (from && from !== end && end.t_ms - from.t_ms >= 2 * POLL_MS) {
    steadyWindow = (end.t_ms - from.t_ms) / 1000;
    steady = (end.delivered - from.delivered) / steadyWindow;
  }
  const d: Drain = {
    upstream_started_at: startedAt,
    seconds,
    msg_per_s: p.count / seconds,
    steady_msg_per_s: steady,
    steady_window_s: steadyWindow,
    crowd_cpu_s: crowdCpu,
    crowd_cpu_us_per_msg: perMessageUs(crowdCpu, p.count),
    upstream_cpu_s: upstreamCpu,
    upstream_cpu_us_per_msg: perMessageUs(upstreamCpu, p.count),
    first_delivery_ms: stats.first_at === null ? null : stats.first_at - startedAt,
    last_delivery_ms: stats.last_at === null ? null : stats.last_at - startedAt,
    upstream_received: stats.count,
    delivered: last!.delivered,
    dead_letters: last!.dead_letters,
    polls: samples.length,
    samples,
  };
  if (d.delivered !== p.count || d.dead_letters !== 0) throw new Error(`drain: lag 0 with ${d.delivered} delivered and ${d.dead_letters} dead letters, expected ${p.count} delivered`);
  progress(`drain: lag 0 after ${seconds.toFixed(2)} s (${d.msg_per_s.toFixed(0)} msg/s); the upstream answered ${stats.count} requests`);
  return { drain: d, upstream };
}

interface Ceiling {
  client: ClientResult;
  client_cpu_us_per_msg: number;
  upstream_received: number;
  upstream_cpu_s: number | null;
  upstream_cpu_us_per_msg: number | null;
}

async function ceiling(upstream: Server, p: Params): Promise<Ceiling> {
  upstream.write('reset');
  const upstreamCpu0 = upstream.cpuSeconds();
  const deadlineS = Math.ceil(60 + p.count / 1000);
  progress(`ceiling: ${p.count} requests straight to the upstream, ${p.concurrency} connections (at most ${deadlineS} s)`);
  const client = await runClient('ceiling', ['--url', `http://127.0.0.1:${upstream.port}${PATH}`, '--count', `${p.count}`, '--connections', `${p.concurrency}`, '--crowd-headers'], deadlineS);
  if (client.ok !== p.count) {
    throw new Error(`ceiling: ${client.ok} of ${p.count} requests answered 2xx (statuses ${JSON.stringify(client.statuses)}, ${client.errors} errors, the first: ${client.first_error})`);
  }
  const upstreamCpu = minus(upstream.cpuSeconds(), upstreamCpu0);
  const stats = await upstreamStats(upstream);
  progress(`ceiling: ${client.seconds.toFixed(2)} s (${client.msg_per_s.toFixed(0)} msg/s)`);
  return {
    client,
    client_cpu_us_per_msg: ((client.cpu_user_s + client.cpu_system_s) * 1e6) / p.count,
    upstream_received: stats.count,
    upstream_cpu_s: upstreamCpu,
    upstream_cpu_us_per_msg: perMessageUs(upstreamCpu, p.count),
  };
}

// ---------------------------------------------------------------------------------------------
// Report

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('   ')).join('\n');
}

/** The fraction of all CPUs' time spent busy over `ms`, from /proc/stat; null where it cannot tell. */
async function cpuBusy(ms: number): Promise<number | null> {
  const read = (): { idle: number; total: number } | null => {
    try {
      const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
      // cpu user nice system idle iowait irq softirq steal ...
      const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
      return { idle: v[3]! + v[4]!, total: v.reduce((a, b) => a + b, 0) };
    } catch {
      return null;
    }
  };
  const a = read();
  await sleep(ms);
  const b = read();
  if (!a || !b || b.total === a.total) return null;
  return 1 - (b.idle - a.idle) / (b.total - a.total);
}


// ---------------------------------------------------------------------------------------------

class UsageError extends Error {}

function parseParams(argv: string[]): Params {
  const { values } = parseArgs({
    args: argv,
    options: {
      count: { type: 'string' },
      large: { type: 'boolean', default: false },
      concurrency: { type: 'string', default: '64' },
      'preload-connections': { type: 'string', default: '64' },
      'cpu-prof': { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const int = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, got "${text}"`);
    return n;
  };
  if (values.large && values.count !== undefined) throw new UsageError('--large and --count do not go together');
  return {
    count: values.count !== undefined ? int('count', values.count, 1, 100_000_000) : values.large ? LARGE_COUNT : DEFAULT_COUNT,
    // crowd's targets[].concurrency is 1-1024.
    concurrency: int('concurrency', values.concurrency, 1, 1024),
    preloadConnections: int('preload-connections', values['preload-connections'], 1, 1024),
    cpuProfDir: values['cpu-prof'] !== undefined ? resolve(values['cpu-prof']) : null,
    out: values.out !== undefined ? resolve(values.out) : RESULTS_FILE,
  };
}

async function main(): Promise<void> {
  let p: Params;
  try {
    p = parseParams(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  for (const [file, how] of [
    [CROWD_MAIN, 'build it with "npx tsc -p tsconfig.json" (or make build)'],
    [NOOP_SERVER, 'build it with "npx tsc -p tsconfig.json" (or make build)'],
    [CLIENT, 'build it with "npx tsc -p tsconfig.json" (or make build)'],
    [join(ROOT, 'node_modules', 'undici', 'package.json'), 'install the npm packages with "npm ci" (or make install)'],
  ] as const) {
    if (!existsSync(file)) {
      process.stderr.write(`bench: ${relative(process.cwd(), file)} is missing; ${how}\n`);
      process.exit(1);
    }
  }
  if (p.cpuProfDir) mkdirSync(p.cpuProfDir, { recursive: true });
  const startedMachine: Record<string, unknown> = { ...machine(), loadavg_at_start: os.loadavg() };
  // Everything here shares the CPUs; a busy machine moves the figures, and not evenly. (The
  // load average would also count the benchmark's own previous run for a minute.)
  const busy = await cpuBusy(1000);
  startedMachine.cpu_busy_before_start = busy;
  if (busy !== null && busy > BUSY_WARNING) progress(`warning: the CPUs were ${(busy * 100).toFixed(0)}% busy in the second before the start: the figures will be noisy`);
  const root = (tempRoot = mkdtempSync(join(os.tmpdir(), 'crowd-bench-drain-')));

  const upstreamPort = await freePort();
  progress(`crowd: starting, target ${TARGET_NAME} -> http://127.0.0.1:${upstreamPort} (nothing listens there yet), concurrency ${p.concurrency}`);
  const crowd = await startCrowd(join(root, 'crowd'), upstreamPort, p);
  let upstream: Server | null = null;
  try {
    const pre = await preload(crowd, p);
    const d = await drain(crowd, upstreamPort, p);
    upstream = d.upstream;
    const status = await crowdStatus(crowd);
    const how = await crowd.stop();
    // crowd exits 0 after SIGTERM; anything else is worth knowing, but the figures still stand.
    if (how !== 'exit code 0') progress(`warning: crowd ended with ${how} after SIGTERM`);
    const ceil = await ceiling(upstream, p);
    await upstream.stop();
    cleanup();

    const ratio = d.drain.msg_per_s / ceil.client.msg_per_s;
    const steadyRatio = d.drain.steady_msg_per_s === null ? null : d.drain.steady_msg_per_s / ceil.client.msg_per_s;
    const results = {
      benchmark: 'drain',
      date: new Date().toISOString(),
      git: { commit: git(['rev-parse', 'HEAD']), dirty: (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '' },
      machine: { ...startedMachine, loadavg_at_end: os.loadavg() },
      node: process.version,
      undici: ceil.client.undici,
      crowd_version: status.version ?? null,
      params: {
        count: p.count,
        concurrency: p.concurrency,
        preload_connections: p.preloadConnections,
        retry_base: RETRY_BASE,
        retry_max: RETRY_MAX,
        log_max_bytes: LOG_MAX_BYTES,
        poll_ms: POLL_MS,
        steady_skip_ms: STEADY_SKIP_MS,
        cpu_prof_dir: p.cpuProfDir,
        method: 'POST',
        path: PATH,
        content_type: CONTENT_TYPE,
        body: BODY,
        body_bytes: Buffer.byteLength(BODY),
      },
      summary: {
        crowd: { messages: p.count, seconds: d.drain.seconds, msg_per_s: d.drain.msg_per_s, steady_msg_per_s: d.drain.steady_msg_per_s, cpu_us_per_msg: d.drain.crowd_cpu_us_per_msg },
        ceiling: { messages: p.count, seconds: ceil.client.seconds, msg_per_s: ceil.client.msg_per_s, cpu_us_per_msg: ceil.client_cpu_us_per_msg },
        ratio,
        steady_ratio: steadyRatio,
        target_ratio: TARGET_RATIO,
        verdict: ratio >= TARGET_RATIO ? 'PASS' : 'BELOW',
      },
      preload: { ...pre, crowd_exit: how },
      drain: d.drain,
      ceiling: ceil,
    };
    mkdirSync(dirname(p.out), { recursive: true });
    writeFileSync(p.out, JSON.stringify(results, null, 2) + '\n');

    const fmt = (n: number | null, digits = 0): string => (n === null ? '-' : n.toFixed(digits));
    const lines = [
      `drain: ${p.count} x POST ${PATH} (${Buffer.byteLength(BODY)}-byte JSON) preloaded while the upstream was down, then delivered to a uWS no-op upstream; concurrency ${p.concurrency}`,
      '',
      table([
        ['system', 'messages', 'seconds', 'msg/s', 'ratio', 'cpu us/msg'],
        ['ceiling (bare undici)', `${p.count}`, fmt(ceil.client.seconds, 2), fmt(ceil.client.msg_per_s), '1.00', fmt(ceil.client_cpu_us_per_msg, 1)],
        ['crowd drain', `${p.count}`, fmt(d.drain.seconds, 2), fmt(d.drain.msg_per_s), fmt(ratio, 2), fmt(d.drain.crowd_cpu_us_per_msg, 1)],
        [`crowd steady (after ${STEADY_SKIP_MS / 1000} s)`, d.drain.steady_window_s === null ? '-' : `${Math.round(d.drain.steady_msg_per_s! * d.drain.steady_window_s)}`, fmt(d.drain.steady_window_s, 2), fmt(d.drain.steady_msg_per_s), fmt(steadyRatio, 2), ''],
      ]),
      '',
      `crowd / ceiling msg/s: ${ratio.toFixed(2)}   target >= ${TARGET_RATIO.toFixed(2)}: ${ratio >= TARGET_RATIO ? 'PASS' : 'BELOW'}`,
      `preload: ${pre.client.ok} x 200 in ${pre.client.seconds.toFixed(1)} s (${pre.client.msg_per_s.toFixed(0)} req/s), log ${(pre.log_bytes / 1024 ** 2).toFixed(1)} MiB; ` +
        `target ${pre.target_before.state} with ${pre.target_before.retrying} retrying before the upstream started`,
      `drain check: ${d.drain.delivered} delivered, ${d.drain.dead_letters} dead letters, the upstream answered ${d.drain.upstream_received}${d.drain.upstream_received === p.count ? '' : ` (MISMATCH: expected ${p.count})`} ` +
        `(first after ${fmt(d.drain.first_delivery_ms)} ms, last after ${fmt(d.drain.last_delivery_ms)} ms); the ceiling's upstream answered ${ceil.upstream_received}${ceil.upstream_received === p.count ? '' : ` (MISMATCH: expected ${p.count})`}`,
      `upstream cpu us/msg: ${fmt(d.drain.upstream_cpu_us_per_msg, 1)} during the drain, ${fmt(ceil.upstream_cpu_us_per_msg, 1)} during the ceiling run`,
    ];
    process.stdout.write(`${lines.join('\n')}\nresults: ${relative(process.cwd(), p.out)}\n`);
  } finally {
    await crowd.stop();
    if (upstream) await upstream.stop();
  }
}

main().then(
  // Exit explicitly: fetch's keep-alive sockets would otherwise hold the process a few seconds.
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`bench: ${err.message}\n`);
    process.exit(1);
  },
);
