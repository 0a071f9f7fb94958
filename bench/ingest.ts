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
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { delimiter, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const ROOT = resolve(__dirname, '..', '..');
const CROWD_BIN = join(ROOT, 'bin', 'crowd');
const NOOP_SERVER = join(__dirname, 'noop-server.js');
const RESULTS_FILE = join(ROOT, 'bench', 'results', 'ingest.json');

const PATH = '/leads';
const BODY = '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}';
const CONTENT_TYPE = 'application/json';
/** crowd / no-op req/s we hold ourselves to now, and where the project wants to get. */
const TARGET_RATIO = 0.6;
const GOAL_RATIO = 0.75;
/** wrk's own default, passed explicitly so the results file says what was used. */
const WRK_TIMEOUT_S = 2;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
const SETTLE_TIMEOUT_MS = 10_000;
/** Output lines kept per child process, to explain a failure. */
const TAIL_LINES = 40;

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

/** The JSON line the Lua done() callback prints (times in microseconds). */
interface WrkResult {
  requests: number;
  duration_us: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; timeout: number; status: number };
  latency_us: { p50: number; p90: number; p99: number; 'p99.9': number; max: number; mean: number };
}

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

/** A server under test, run as a child process, with the tail of its output for diagnostics. */
class Server {
  readonly tail: string[] = [];
  readonly exited: Promise<string>;
  port = 0;
  adminPort = 0;
  private readonly proc: ChildProcess;

  constructor(
    readonly name: string,
    args: string[],
    cwd: string,
    /** The no-op server exits when its stdin closes; crowd does not read stdin. */
    stdin: 'pipe' | 'ignore',
  ) {
    this.proc = track(spawn(process.execPath, args, { cwd, stdio: [stdin, 'pipe', 'pipe'] }));
    this.exited = new Promise((res) => this.proc.once('exit', (code, signal) => res(signal ?? `exit code ${code}`)));
    // Both streams are always drained: a child blocked on a full pipe would skew the run.
    createInterface({ input: this.proc.stderr! }).on('line', (line) => this.keep(line));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the first stdout line `parse` accepts; rejects if the process exits first. */
  waitFor(parse: (line: string) => boolean): Promise<void> {
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(this.failure(`did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      let ready = false;
      createInterface({ input: this.proc.stdout! }).on('line', (line) => {
        this.keep(line);
        if (ready || !parse(line)) return;
        ready = true;
        clearTimeout(timer);
        res();
      });
      void this.exited.then((how) => {
        clearTimeout(timer);
        if (!ready) rej(this.failure(`exited (${how}) before listening`));
      });
    });
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

async function startNoop(): Promise<Server> {
  const server = new Server('no-op server', [NOOP_SERVER], ROOT, 'pipe');
  await server.waitFor((line) => {
    if (!/^\d+$/.test(line)) return false;
    server.port = Number(line);
    return true;
  });
  return server;
}

async function startCrowd(dir: string): Promise<Server> {
  mkdirSync(dir);
  const configFile = join(dir, 'crowd.json');
  const config = {
    server: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: { dir: join(dir, 'data') },
    routes: [{ name: 'leads', path: PATH }],
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  const server = new Server('crowd', [CROWD_BIN, 'start', '-c', configFile], dir, 'ignore');
  await server.waitFor((line) => {
    if (!line.includes('"event":"listening"')) return false;
    const j = JSON.parse(line) as { port: number; admin_port: number };
    server.port = j.port;
    server.adminPort = j.admin_port;
    return true;
  });
  return server;
}

// ---------------------------------------------------------------------------------------------
// wrk

function findOnPath(command: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; try the next directory
    }
  }
  return null;
}

/**
 * The request is static (no request() callback), so wrk builds it once and the script costs
 * nothing per request; done() runs once, after wrk's own report, and prints one JSON line.
 */
function wrkScript(): string {
  return `-- Generated by bench/ingest.ts for one benchmark run.
wrk.method = "POST"
wrk.body = [==[${BODY}]==]
wrk.headers["Content-Type"] = "${CONTENT_TYPE}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
`;
}

function runWrk(url: string, seconds: number, p: Params, script: string): Promise<WrkResult> {
  const args = ['--threads', `${p.threads}`, '--connections', `${p.connections}`, '--duration', `${seconds}s`, '--timeout', `${WRK_TIMEOUT_S}s`, '--script', script, url];
  return new Promise((res, rej) => {
    const proc = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // wrk stops by itself; this only guards against a hung wrk holding the benchmark forever.
    const timer = setTimeout(() => proc.kill('SIGKILL'), (seconds + 30) * 1000);
    proc.once('error', (err) => {
      clearTimeout(timer);
      rej(new Error(`cannot run wrk: ${err.message}`));
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
      if (code !== 0 || !line) {
        rej(new Error(`wrk ${args.join(' ')} failed (${signal ?? `exit code ${code}`}):\n${stderr}${stdout}`));
        return;
      }
      res(JSON.parse(line) as WrkResult);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// crowd's admin API

interface CrowdStatus {
  version?: string;
  ingest: { port: number | null };
  log: { last_offset: number; durable_offset: number; pending_writes: number };
}

async function crowdStatus(adminPort: number): Promise<CrowdStatus> {
  const url = `http://127.0.0.1:${adminPort}/status`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    // fetch's own message is only "fetch failed"; the reason is in its cause.
    const cause = (err as Error).cause as Error | undefined;
    throw new Error(`GET ${url} failed: ${cause?.message ?? (err as Error).message}`);
  }
  if (!res.ok) throw new Error(`GET /status on crowd's admin port answered ${res.status}`);
  return (await res.json()) as CrowdStatus;
}

/**
 * Requests still in flight when wrk stops are stored after it stopped counting; wait until
 * every write is flushed and the offset holds still, so the count is final.
 */
async function settledStatus(crowd: Server): Promise<CrowdStatus> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  let previous = -1;
  let why = '';
  for (;;) {
    if (!crowd.running) throw crowd.failure('exited while its log was being read');
    let s: CrowdStatus | null = null;
    try {
      s = await crowdStatus(crowd.adminPort);
    } catch (err) {
      // Right after a run the machine is still busy closing hundreds of sockets: retry a
      // failed call until the deadline rather than lose the whole benchmark to it.
      why = (err as Error).message;
    }
    if (s) {
      // The offsets only mean something if they come from the crowd that took the load.
      if (s.ingest.port !== crowd.port) throw crowd.failure(`admin port ${crowd.adminPort} answered for ingest port ${s.ingest.port}, not ${crowd.port}`);
      const { last_offset, durable_offset, pending_writes } = s.log;
      if (pending_writes === 0 && durable_offset === last_offset && last_offset === previous) return s;
      why = `last ${last_offset}, durable ${durable_offset}, pending ${pending_writes}`;
      previous = last_offset;
    }
    if (Date.now() > deadline) throw new Error(`crowd's log did not settle within ${SETTLE_TIMEOUT_MS} ms (${why})`);
    await new Promise((r) => setTimeout(r, 100));
  }
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
  try {
    const url = `http://127.0.0.1:${server.port}${PATH}`;
    if (p.warmupS > 0) {
      progress(`run ${run}/${p.runs} ${label}: ${p.warmupS} s warm-up`);
      await runWrk(url, p.warmupS, p, script);
      if (!server.running) throw server.failure('exited during the warm-up');
    }
    const before = system === 'crowd' ? await settledStatus(server) : null;
    progress(`run ${run}/${p.runs} ${label}: measuring ${p.durationS} s`);
    const wrk = await runWrk(url, p.durationS, p, script);
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
    if (system === 'crowd') rmSync(crowdDir, { recursive: true, force: true });
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

function git(args: string[]): string | null {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu_model: cpus[0]?.model ?? null,
    cpu_count: cpus.length,
    total_memory_bytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    arch: os.arch(),
    loadavg_at_start: os.loadavg(),
  };
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
  const startedMachine = machine();
  const root = (tempRoot = mkdtempSync(join(os.tmpdir(), 'crowd-bench-')));
  const script = join(root, 'ingest.lua');
  writeFileSync(script, wrkScript());

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
  const wrkVersion = spawnSync('wrk', ['-v'], { encoding: 'utf8' });
  const results = {
    benchmark: 'ingest',
    date: new Date().toISOString(),
    git: { commit: git(['rev-parse', 'HEAD']), dirty: (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '' },
    machine: startedMachine,
    node: process.version,
    wrk: `${wrkVersion.stdout ?? ''}${wrkVersion.stderr ?? ''}`.split('\n')[0]!.trim(),
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
