/**
 * The comparison systems of the ingest benchmark: what other durable stores do with the same
 * small messages on the same machine.
 *
 * - naive: a node:http server (naive-server.ts) that appends each POST body to a file and
 *   fdatasyncs once per request before answering; loaded with wrk exactly as crowd is.
 * - redis: redis-server 7 with AOF and `appendfsync always`, loaded with redis-benchmark
 *   running `XADD bench * body <payload>`.
 * - nats: nats-server with JetStream file storage, loaded by nats-publisher.ts (js.publish,
 *   which waits for the PubAck), `connections` publishes in flight.
 *
 * Every run starts its own server on 127.0.0.1 on a port the kernel picked, with its files in a
 * fresh directory under opts.tmpDir (removed afterwards), and stops it at the end. Every child
 * process is tracked: stopAll() kills them, and it runs by itself on exit, SIGINT and SIGTERM.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { findOnPath, freePort } from '../lib/proc';
import { WRK_TIMEOUT_S, runWrk, wrkArgs, writeWrkScript } from '../lib/wrk';

export interface SystemRun {
  system: 'naive' | 'redis' | 'nats';
  /** Concurrency used (connections; for nats, publishes in flight on one connection). */
  connections: number;
  /** Measured duration. */
  seconds: number;
  /** Acknowledged operations in that time. */
  requests: number;
  /** requests / seconds. */
  rate: number;
  latency_ms?: { p50: number; p90: number; p99: number; p999?: number; max: number };
  errors: number;
  /** Versions, command lines, config used. */
  detail: Record<string, unknown>;
}

const ROOT = resolve(__dirname, '..', '..', '..');
const NAIVE_SERVER = join(__dirname, 'naive-server.js');
const NATS_PUBLISHER = join(__dirname, 'nats-publisher.js');
const PATH = '/leads';
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
/** wrk's own default, passed explicitly so the detail says what was used. */
const TAIL_LINES = 40;
/** How long a child that exits when its stdin closes gets to do so before SIGTERM. */
const STDIN_GRACE_MS = 3_000;
const SETTLE_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Tools

/** Which Debian package brings each command. */
const DEBIAN_PACKAGE: Record<string, string> = {
  wrk: 'wrk',
  'redis-server': 'redis-server',
  'redis-benchmark': 'redis-tools',
  'redis-cli': 'redis-tools',
  'nats-server': 'nats-server',
};

function bin(command: string): string {
  const path = findOnPath(command);
  if (!path) requireTools([command]);
  return path!;
}

/** Throws an Error with a clear message (which Debian package to install) when a binary is missing. */
export function requireTools(tools: string[]): void {
  const missing = tools.filter((t) => findOnPath(t) === null);
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((t) => DEBIAN_PACKAGE[t] ?? t))];
  const what = missing.map((t) => `${t} (Debian package ${DEBIAN_PACKAGE[t] ?? 'unknown'})`).join(', ');
  throw new Error(`not installed: ${what}; install with "apt-get install -y ${packages.join(' ')}" (or make deps)`);
}

const versions = new Map<string, string>();
/** The first line a tool prints for its version flag, cached. */
function version(command: string, args: string[]): string {
  const key = `${command} ${args.join(' ')}`;
  let v = versions.get(key);
  if (v === undefined) {
    const r = spawnSync(bin(command), args, { encoding: 'utf8', timeout: 10_000 });
    v = `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n').find((l) => l.trim() !== '')?.trim() ?? 'unknown';
    versions.set(key, v);
  }
  return v;
}

function npmVersion(pkg: string): string | null {
  try {
    return (JSON.parse(readFileSync(join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Processes and temp directories: everything started is tracked.

const children = new Set<ChildProcess>();
const temps = new Set<string>();
let handlersInstalled = false;

/** Kills every process this module started and removes its temp directories. Synchronous. */
export function stopAll(): void {
  for (const proc of children) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }
  children.clear();
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
  temps.clear();
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', stopAll);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(signal, () => {
      stopAll();
      // If nobody else handles the signal, do what it would have done: end the process.
      if (process.listenerCount(signal) === 1) {
        process.stderr.write(`baselines: ${signal}: stopped\n`);
        process.exit(code);
      }
    });
  }
}

function runDir(tmpDir: string, prefix: string): string {
  installHandlers();
  const dir = mkdtempSync(join(tmpDir, prefix));
  temps.add(dir);
  return dir;
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  temps.delete(dir);
}


/** A child process with the tail of its output (both streams, always drained) for diagnostics. */
class Proc {
  readonly tail: string[] = [];
  readonly exited: Promise<string>;
  readonly stdout: string[] = [];
  private readonly proc: ChildProcess;
  private readonly listeners = new Set<(line: string) => void>();
  private readonly stopSignal: NodeJS.Signals;

  constructor(
    readonly name: string,
    command: string,
    readonly args: string[],
    opts: { stdin: 'pipe' | 'ignore'; cwd?: string; keepStdout?: boolean; stopSignal?: NodeJS.Signals },
  ) {
    this.stopSignal = opts.stopSignal ?? 'SIGTERM';
    installHandlers();
    this.proc = spawn(command, args, { cwd: opts.cwd ?? ROOT, stdio: [opts.stdin, 'pipe', 'pipe'] });
    children.add(this.proc);
    this.exited = new Promise((res) => {
      this.proc.once('error', (err) => {
        children.delete(this.proc);
        res(`failed to start: ${err.message}`);
      });
      this.proc.once('exit', () => children.delete(this.proc));
      // 'close', not 'exit': by then its stdout and stderr were read to the end.
      this.proc.once('close', (code, signal) => res(signal ?? `exit code ${code}`));
    });
    // A stdin the child stopped reading must not crash us with EPIPE.
    this.proc.stdin?.on('error', () => {});
    for (const [stream, isStdout] of [[this.proc.stdout!, true], [this.proc.stderr!, false]] as const) {
      // Progress lines (redis-benchmark) end in \r; split on those too.
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (raw) => {
        for (const line of raw.split('\r')) {
          if (isStdout && opts.keepStdout) this.stdout.push(line);
          this.tail.push(line);
          if (this.tail.length > TAIL_LINES) this.tail.shift();
          for (const fn of this.listeners) fn(line);
        }
      });
    }
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the match of the first output line (either stream) matching `re`. */
  waitLine(re: RegExp, what: string, timeoutMs = START_TIMEOUT_MS): Promise<RegExpMatchArray> {
    return new Promise((res, rej) => {
      let done = false;
      const finish = (err: Error | null, m?: RegExpMatchArray): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.listeners.delete(onLine);
        if (err) rej(err);
        else res(m!);
      };
      const onLine = (line: string): void => {
        const m = line.match(re);
        if (m) finish(null, m);
      };
      const timer = setTimeout(() => finish(this.failure(`did not ${what} within ${timeoutMs} ms`)), timeoutMs);
      for (const line of this.tail) onLine(line);
      this.listeners.add(onLine);
      void this.exited.then((how) => finish(this.failure(`${how.startsWith('failed') ? how : `exited (${how})`} before it could ${what}`)));
    });
  }

  /**
   * Closes its stdin (our own scripts exit on that) and gives it STDIN_GRACE_MS, then its stop
   * signal (SIGTERM unless told otherwise), then SIGKILL after the timeout; resolves with how it ended.
   */
  async stop(timeoutMs = STOP_TIMEOUT_MS): Promise<string> {
    if (!this.running) return this.exited;
    if (this.proc.stdin) {
      this.proc.stdin.end();
      const timer = setTimeout(() => this.proc.kill(this.stopSignal), STDIN_GRACE_MS);
      const ended = await Promise.race([this.exited, new Promise<null>((r) => setTimeout(() => r(null), STDIN_GRACE_MS + 50))]);
      clearTimeout(timer);
      if (ended !== null) return ended;
    } else {
      this.proc.kill(this.stopSignal);
    }
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const how = await this.exited;
    clearTimeout(timer);
    return how;
  }

  /** Waits for it to end by itself, SIGKILL after the timeout. */
  async finish(timeoutMs: number): Promise<string> {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const how = await this.exited;
    clearTimeout(timer);
    return how;
  }

  failure(what: string): Error {
    return new Error(`${this.name} ${what}; its last output:\n${this.tail.join('\n') || '(none)'}`);
  }

  commandLine(command: string): string {
    return [command, ...this.args].map(shellQuote).join(' ');
  }
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Runs a command to its end (bounded) and returns its stdout; throws with its output otherwise. */
async function runToEnd(name: string, command: string, args: string[], timeoutMs: number): Promise<string> {
  const p = new Proc(name, command, args, { stdin: 'ignore', keepStdout: true });
  const how = await p.finish(timeoutMs);
  if (how !== 'exit code 0') throw p.failure(how === 'SIGKILL' ? `did not finish within ${timeoutMs} ms` : `failed (${how})`);
  return p.stdout.join('\n');
}

// ---------------------------------------------------------------------------------------------
// 1. naive: node:http, one write + fdatasync per request

/** The file's size once it held still for 200 ms (at most SETTLE_TIMEOUT_MS). */
async function settledSize(file: string): Promise<number> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  let previous = -1;
  for (;;) {
    const size = statSync(file).size;
    if (size === previous || Date.now() > deadline) return size;
    previous = size;
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function runNaive(opts: { connections: number; seconds: number; warmupSeconds: number; threads: number; body: string; contentType: string; tmpDir: string }): Promise<SystemRun> {
  requireTools(['wrk']);
  const dir = runDir(opts.tmpDir, 'naive-');
  const file = join(dir, 'naive.log');
  const script = writeWrkScript(dir, 'naive', opts.body, opts.contentType);
  const server = new Proc('naive server', process.execPath, [NAIVE_SERVER, '--file', file], { stdin: 'pipe' });
  try {
    const port = Number((await server.waitLine(/^(\d+)$/, 'print its port'))[1]);
    const url = `http://127.0.0.1:${port}${PATH}`;
    if (opts.warmupSeconds > 0) {
      await runWrk(url, { seconds: opts.warmupSeconds, connections: opts.connections, threads: opts.threads, script });
      if (!server.running) throw server.failure('exited during the warm-up');
    }
    // The warm-up's last requests (one per connection) are stored after wrk stopped counting.
    const sizeBefore = await settledSize(file);
    const run = { seconds: opts.seconds, connections: opts.connections, threads: opts.threads, script };
    const args = wrkArgs(url, run);
    const wrk = await runWrk(url, run);
    if (!server.running) throw server.failure('exited during the run');
    // Requests in flight when wrk stopped are still stored; they are done once it stops.
    const how = await server.stop();
    const recordBytes = Buffer.byteLength(opts.body) + 1;
    const stored = (statSync(file).size - sizeBefore) / recordBytes;
    const e = wrk.errors;
    const ok = wrk.requests - e.status;
    const seconds = wrk.duration_us / 1e6;
    const ms = (us: number): number => us / 1000;
    return {
      system: 'naive',
      connections: opts.connections,
      seconds,
      requests: ok,
      rate: ok / seconds,
      latency_ms: { p50: ms(wrk.latency_us.p50), p90: ms(wrk.latency_us.p90), p99: ms(wrk.latency_us.p99), p999: ms(wrk.latency_us['p99.9']), max: ms(wrk.latency_us.max) },
      errors: e.status + e.connect + e.read + e.write + e.timeout,
      detail: {
        server: 'bench/baselines/naive-server.ts: node:http, per POST fs.writeSync(body + "\\n") then fs.fdatasyncSync, then 200 {"status":"OK"}',
        fsync: 'one fdatasync per request, before its response (no batching; synchronous, so the event loop serializes them)',
        node: process.version,
        wrk_version: version('wrk', ['-v']),
        server_command: server.commandLine(process.execPath),
        wrk_command: ['wrk', ...args].map(shellQuote).join(' '),
        warmup_s: opts.warmupSeconds,
        threads: Math.max(1, Math.min(opts.threads, opts.connections)),
        wrk_timeout_s: WRK_TIMEOUT_S,
        method: 'POST',
        path: PATH,
        content_type: opts.contentType,
        body_bytes: Buffer.byteLength(opts.body),
        wrk,
        errors_by_kind: e,
        // Each acknowledged request promises a stored line; at most one per connection more.
        stored_during_run: stored,
        stored_check: stored >= ok && stored - ok <= opts.connections ? 'OK' : 'MISMATCH',
        server_exit: how,
      },
    };
  } finally {
    await server.stop();
    removeDir(dir);
  }
}

// ---------------------------------------------------------------------------------------------
// 2. redis: AOF, appendfsync always, redis-benchmark XADD

interface RedisBench {
  requests: number;
  rps: number;
  /** From "N requests completed in X seconds" (two decimals). */
  reported_s: number | null;
  latency_ms: { avg: number; min: number; p50: number; p95: number; p99: number; max: number };
  /** Upper bounds read off redis-benchmark's two distributions (their bucket resolution). */
  p90_ms: number;
  p999_ms: number;
  wall_s: number;
}

/** Parses redis-benchmark's default (not --csv, not -q) report for one test. */
function parseRedisBenchmark(out: string): RedisBench {
  const lines = out.split(/\r?\n|\r/).map((l) => l.trim());
  const completed = out.match(/(\d+) requests completed in ([\d.]+) seconds/);
  const rps = out.match(/throughput summary: ([\d.]+) requests per second/);
  const header = lines.findIndex((l) => /^avg\s+min\s+p50\s+p95\s+p99\s+max$/.test(l));
  const summary = header >= 0 ? lines[header + 1]!.split(/\s+/).map(Number) : [];
  if (!completed || !rps || summary.length !== 6 || summary.some((n) => !Number.isFinite(n))) {
    throw new Error(`cannot read redis-benchmark's report:\n${out.slice(-3000)}`);
  }
  // "P% <= X milliseconds (cumulative count C)" in both sections: P% of requests took at most X.
  const rows = lines
    .map((l) => l.match(/^([\d.]+)% <= ([\d.]+) milliseconds/))
    .filter((m): m is RegExpMatchArray => m !== null)
    .map((m) => ({ pct: Number(m[1]), ms: Number(m[2]) }));
  const bound = (pct: number): number => Math.min(...rows.filter((r) => r.pct >= pct).map((r) => r.ms), summary[5]!);
  const [avg, min, p50, p95, p99, max] = summary as [number, number, number, number, number, number];
  return {
    requests: Number(completed[1]),
    rps: Number(rps[1]),
    reported_s: Number(completed[2]),
    latency_ms: { avg, min, p50, p95, p99, max },
    p90_ms: bound(90),
    p999_ms: bound(99.9),
    wall_s: 0,
  };
}

/** CONFIG GET's raw output: name and value on alternate lines. */
function pairs(raw: string): Record<string, string> {
  const lines = raw.split('\n');
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) out[lines[i]!] = lines[i + 1]!;
  return out;
}

async function redisCli(port: number, args: string[]): Promise<string> {
  return (await runToEnd('redis-cli', bin('redis-cli'), ['-h', '127.0.0.1', '-p', `${port}`, ...args], 10_000));
}

export async function runRedis(opts: { connections: number; seconds: number; body: string; tmpDir: string }): Promise<SystemRun> {
  requireTools(['redis-server', 'redis-benchmark', 'redis-cli']);
  const dir = runDir(opts.tmpDir, 'redis-');
  const port = await freePort();
  const serverArgs = ['--port', `${port}`, '--bind', '127.0.0.1', '--daemonize', 'no', '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--dir', dir];
  const server = new Proc('redis-server', bin('redis-server'), serverArgs, { stdin: 'ignore', cwd: dir });
  const benchArgs = (n: number): string[] => ['-h', '127.0.0.1', '-p', `${port}`, '-c', `${opts.connections}`, '-n', `${n}`, '-P', '1', 'XADD', 'bench', '*', 'body', opts.body];
  const bench = async (n: number): Promise<RedisBench> => {
    const started = process.hrtime.bigint();
    // Generous bound: the calibration may be far off on a busy machine.
    const out = await runToEnd('redis-benchmark', bin('redis-benchmark'), benchArgs(n), (opts.seconds * 5 + 60) * 1000);
    const r = parseRedisBenchmark(out);
    r.wall_s = Number(process.hrtime.bigint() - started) / 1e9;
    return r;
  };
  try {
    await server.waitLine(/Ready to accept connections/, 'accept connections');
    const config = await redisCli(port, ['CONFIG', 'GET', 'appendonly', 'appendfsync', 'save', 'dir']);
    // Calibration, which doubles as the warm-up: a short run, then one of about a second
    // sized by the first; N for `seconds` from the second one's rate.
    const probeN = Math.max(2_000, opts.connections * 20);
    const probe = await bench(probeN);
    const calibrationN = Math.max(probeN, Math.round(probe.rps));
    const calibration = await bench(calibrationN);
    const n = Math.max(opts.connections * 10, Math.round(calibration.rps * opts.seconds));
    const r = await bench(n);
    if (!server.running) throw server.failure('exited during the run');
    const xlen = Number(await redisCli(port, ['XLEN', 'bench']));
    const how = await server.stop();
    const seconds = r.requests / r.rps;
    return {
      system: 'redis',
      connections: opts.connections,
      seconds,
      requests: r.requests,
      rate: r.rps,
      latency_ms: { p50: r.latency_ms.p50, p90: r.p90_ms, p99: r.latency_ms.p99, p999: r.p999_ms, max: r.latency_ms.max },
      // redis-benchmark 7 stops at the first error reply and exits non-zero (we throw then).
      errors: 0,
      detail: {
        fsync: 'appendfsync always: AOF on, every write command is in an fdatasync (redis groups the commands of one event-loop turn into one write + fdatasync, before their replies are sent); no RDB snapshots (save "")',
        redis_server_version: version('redis-server', ['--version']),
        redis_benchmark_version: version('redis-benchmark', ['--version']),
        server_command: server.commandLine('redis-server'),
        benchmark_command: ['redis-benchmark', ...benchArgs(n)].map(shellQuote).join(' '),
        server_config: pairs(config),
        command: 'XADD bench * body <payload>',
        body_bytes: Buffer.byteLength(opts.body),
        pipeline: 1,
        calibration: [
          { requests: probeN, rps: probe.rps, wall_s: probe.wall_s },
          { requests: calibrationN, rps: calibration.rps, wall_s: calibration.wall_s },
        ],
        requests_planned: n,
        seconds_from_rps: seconds,
        seconds_reported: r.reported_s,
        wall_s: r.wall_s,
        latency_summary_ms: r.latency_ms,
        latency_note: 'p50/p99/max from redis-benchmark\'s summary; p90 and p99.9 are upper bounds read off its distributions (bucket resolution); p95 and avg in latency_summary_ms',
        stream_length: xlen,
        stored_check: xlen === probeN + calibrationN + n ? 'OK' : 'MISMATCH',
        server_exit: how,
      },
    };
  } finally {
    await server.stop();
    removeDir(dir);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. nats: JetStream, file storage, js.publish waiting for the PubAck

let syncAlwaysSupported: boolean | undefined;

/** Whether this nats-server accepts `jetstream { sync_interval: always }` (added in 2.10). */
export function natsSyncAlwaysSupported(): boolean {
  if (syncAlwaysSupported !== undefined) return syncAlwaysSupported;
  const dir = mkdtempSync(join(os.tmpdir(), 'crowd-nats-probe-'));
  try {
    const conf = join(dir, 'probe.conf');
    writeFileSync(conf, natsConfig(join(dir, 'js')));
    const r = spawnSync(bin('nats-server'), ['-t', '-c', conf], { encoding: 'utf8', timeout: 10_000 });
    syncAlwaysSupported = r.status === 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return syncAlwaysSupported;
}

function natsConfig(storeDir: string): string {
  return `jetstream {\n  store_dir: ${JSON.stringify(storeDir)}\n  sync_interval: always\n}\n`;
}

interface PublisherResult {
  server_version: string | null;
  in_flight: number;
  nats_connections: number;
  warmup_s: number;
  measured_s: number;
  acked: number;
  acked_total: number;
  errors: number;
  error_samples: string[];
  drained: boolean;
  latency_us: { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
  stream: { name: string; storage: string; subjects: string[]; messages: number; bytes: number };
}

/**
 * `sync: 'default'` (the default) runs nats-server as it comes; `'always'` adds
 * `sync_interval: always` (fsync per message) and throws if this nats-server lacks it.
 */
export async function runNats(opts: { connections: number; seconds: number; warmupSeconds: number; body: string; tmpDir: string; sync?: 'default' | 'always' }): Promise<SystemRun> {
  requireTools(['nats-server']);
  const sync = opts.sync ?? 'default';
  const serverVersion = version('nats-server', ['--version']);
  if (sync === 'always' && !natsSyncAlwaysSupported()) {
    throw new Error(`${serverVersion} does not support "sync_interval: always" (added in nats-server 2.10); only the default sync mode can be measured`);
  }
  const dir = runDir(opts.tmpDir, 'nats-');
  const storeDir = join(dir, 'jetstream');
  const port = await freePort();
  const serverArgs = ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', `${port}`];
  if (sync === 'always') {
    const conf = join(dir, 'nats.conf');
    writeFileSync(conf, natsConfig(storeDir));
    serverArgs.unshift('-c', conf);
  }
  // SIGINT: nats-server shuts down cleanly either way, but exits 1 on SIGTERM.
  const server = new Proc('nats-server', bin('nats-server'), serverArgs, { stdin: 'ignore', cwd: dir, stopSignal: 'SIGINT' });
  let publisher: Proc | null = null;
  try {
    await server.waitLine(/Server is ready/, 'become ready');
    const pubArgs = [NATS_PUBLISHER, '--port', `${port}`, '--in-flight', `${opts.connections}`, '--seconds', `${opts.seconds}`, '--warmup', `${opts.warmupSeconds}`, '--body', opts.body];
    // Its stdin stays open while it runs: it exits at once if we go away.
    publisher = new Proc('nats publisher', process.execPath, pubArgs, { stdin: 'pipe', keepStdout: true });
    const how = await publisher.finish((opts.warmupSeconds + opts.seconds + 60) * 1000);
    if (how !== 'exit code 0') throw publisher.failure(how === 'SIGKILL' ? 'did not finish in time' : `failed (${how})`);
    const line = publisher.stdout.find((l) => l.startsWith('{'));
    if (!line) throw publisher.failure('printed no result');
    const p = JSON.parse(line) as PublisherResult;
    if (!server.running) throw server.failure('exited during the run');
    const serverExit = await server.stop();
    const ms = (us: number): number => us / 1000;
    return {
      system: 'nats',
      connections: opts.connections,
      seconds: p.measured_s,
      requests: p.acked,
      rate: p.acked / p.measured_s,
      latency_ms: { p50: ms(p.latency_us.p50), p90: ms(p.latency_us.p90), p99: ms(p.latency_us.p99), p999: ms(p.latency_us.p999), max: ms(p.latency_us.max) },
      errors: p.errors,
      detail: {
        sync,
        fsync:
          sync === 'always'
            ? 'sync_interval: always: the file store fsyncs every message before the PubAck'
            : 'no fsync before the PubAck: the message is written (pwrite) to the file store block, i.e. the OS page cache. The 2.9 file store has only a background sync timer (60 s in the 2.9 source), and strace of nats-server 2.9.10 saw no fsync/fdatasync at all in a 5 s run, the 75 s after it, or its clean shutdown. sync_interval (default 2 min) and sync_interval: always exist only from nats-server 2.10; 2.9 rejects them ("unknown field")',
        sync_always_supported: natsSyncAlwaysSupported(),
        nats_server_version: serverVersion,
        nats_server_reported: p.server_version,
        nats_client: `nats (npm) ${npmVersion('nats') ?? '?'}`,
        histogram: `hdr-histogram-js ${npmVersion('hdr-histogram-js') ?? '?'}`,
        node: process.version,
        server_command: server.commandLine('nats-server'),
        publisher_command: publisher.commandLine('node'),
        stream: p.stream,
        in_flight: p.in_flight,
        nats_connections: p.nats_connections,
        note: 'connections = JetStream publishes kept in flight on one NATS connection, from one Node.js publisher process; that process tends to run out of CPU before nats-server does (on 2 cores at 256 in flight: publisher ~100% of a core, nats-server ~20%), so the rate is a lower bound of what nats-server can take',
        warmup_s: p.warmup_s,
        acked_total_including_warmup: p.acked_total,
        error_samples: p.error_samples,
        drained: p.drained,
        stored_check: p.stream.messages >= p.acked_total ? 'OK' : 'MISMATCH',
        body_bytes: Buffer.byteLength(opts.body),
        latency_mean_ms: ms(p.latency_us.mean),
        server_exit: serverExit,
      },
    };
  } finally {
    if (publisher) await publisher.stop();
    await server.stop();
    removeDir(dir);
  }
}
