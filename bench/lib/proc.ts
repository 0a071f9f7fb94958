/**
 * Processes, temp directories and tools for the benchmark suite. Everything started is
 * tracked so that every way out (the end, an error, Ctrl-C, SIGTERM) removes it.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

export const ROOT = resolve(__dirname, '..', '..', '..');
export const CROWD_BIN = join(ROOT, 'bin', 'crowd');
/** The compiled bench directory (dist/bench). */
export const BENCH_DIST = resolve(__dirname, '..');
export const START_TIMEOUT_MS = 20_000;
export const STOP_TIMEOUT_MS = 15_000;
const TAIL_LINES = 40;

const children = new Set<ChildProcess>();
const temps = new Set<string>();
const cleanups: (() => void)[] = [];

export function track(proc: ChildProcess): ChildProcess {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

/** Runs `fn` at cleanup (synchronously). */
export function onCleanup(fn: () => void): void {
  cleanups.push(fn);
}

/** Kills every tracked process and removes every temp directory. Synchronous: works from signal handlers. */
export function cleanup(): void {
  for (const fn of cleanups.splice(0)) {
    try {
      fn();
    } catch {
      // keep cleaning up
    }
  }
  for (const proc of children) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  children.clear();
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
  temps.clear();
}

let installed = false;
/** Installs the exit and signal handlers (once). */
export function installCleanup(): void {
  if (installed) return;
  installed = true;
  process.on('exit', cleanup);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      process.stderr.write(`bench: ${signal}: stopping, cleaning up\n`);
      cleanup();
      process.exit(code);
    });
  }
}

export function tempDir(prefix = 'crowd-bench-'): string {
  const dir = mkdtempSync(join(os.tmpdir(), prefix));
  temps.add(dir);
  return dir;
}

export function removeTemp(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  temps.delete(dir);
}

export function progress(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function findOnPath(command: string): string | null {
  // Debian installs some servers (nats-server) in /usr/sbin, which a user's PATH may lack.
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin']) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Fails with the package to install when a tool is missing. */
export function requireTool(command: string, debianPackage: string): void {
  if (!findOnPath(command)) throw new Error(`${command} not found: install it with "apt-get install ${debianPackage}" (or "make deps")`);
}

/** A free loopback TCP port (bound and released; fine for a benchmark on a quiet machine). */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

/** Resident set size of a process in bytes (from /proc), or null when it is gone. */
export function rssBytes(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

let clockTicks: number | null | undefined;

/** CPU seconds (utime + stime) a process used so far, from /proc/PID/stat (Linux); null where it cannot tell. */
export function cpuSeconds(pid: number): number | null {
  try {
    clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || null;
    if (!clockTicks) return null;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicks;
  } catch {
    clockTicks ??= null;
    return null;
  }
}

export function git(args: string[]): string | null {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

/** A child process under test, with the tail of its output for diagnostics. */
export class Child {
  readonly tail: string[] = [];
  readonly exited: Promise<string>;
  readonly proc: ChildProcess;
  port = 0;
  adminPort = 0;
  private readonly lineListeners: ((line: string) => void)[] = [];

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    opts: SpawnOptions & { stdin?: 'pipe' | 'ignore' } = {},
  ) {
    this.proc = track(spawn(command, args, { ...opts, stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'] }));
    this.exited = new Promise((res) => this.proc.once('exit', (code, signal) => res(signal ?? `exit code ${code}`)));
    this.proc.once('error', (err) => this.keep(`spawn failed: ${err.message}`));
    // Both streams are always drained: a child blocked on a full pipe would skew the run.
    createInterface({ input: this.proc.stderr! }).on('line', (line) => this.keep(line));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.keep(line);
      for (const l of this.lineListeners) l(line);
    });
  }

  get pid(): number {
    return this.proc.pid ?? 0;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the first stdout line `accept` takes; rejects if the process exits first or after the timeout. */
  waitFor(accept: (line: string) => boolean, timeoutMs = START_TIMEOUT_MS, what = 'start'): Promise<void> {
    return new Promise((res, rej) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        rej(this.failure(`did not ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.lineListeners.push((line) => {
        if (done || !accept(line)) return;
        done = true;
        clearTimeout(timer);
        res();
      });
      void this.exited.then((how) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        rej(this.failure(`exited (${how}) before it could ${what}`));
      });
    });
  }

  /** SIGTERM, then SIGKILL after STOP_TIMEOUT_MS; resolves with how it ended. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<string> {
    if (!this.running) return this.exited;
    this.proc.kill(signal);
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
