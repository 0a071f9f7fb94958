/**
 * Test launcher: writes a temp config, spawns the real `bin/crowd start` (ports 0, so the
 * kernel picks free loopback ports), reads the chosen ports from its "listening" log line,
 * and offers kill9(), sigterm() and restart() on the same log directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { request } from './http';

export const ROOT = resolve(__dirname, '..', '..', '..');
export const BIN = join(ROOT, 'bin', 'crowd');

export function tempDir(prefix = 'crowd-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface CrowdOptions {
  /** Config tree (JSON shape); server/admin ports and log.dir are filled in when absent. */
  config?: Record<string, any>;
  dir?: string;
  /** Wraps the command, e.g. ['strace', '-f', ...]. */
  wrap?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Crowd {
  readonly dir: string;
  readonly configFile: string;
  readonly lines: string[] = [];
  port = 0;
  adminPort = 0;
  proc: ChildProcess | null = null;
  /** Where url() and adminUrl() connect: the configured address, or loopback for a wildcard or name. */
  readonly host: string;
  readonly adminHost: string;
  private exited: Promise<ExitInfo> | null = null;
  private readonly opts: CrowdOptions;

  constructor(opts: CrowdOptions = {}) {
    this.opts = opts;
    this.dir = opts.dir ?? tempDir();
    const config = structuredClone(opts.config ?? {});
    config.server = { host: '127.0.0.1', port: 0, ...(config.server ?? {}) };
    config.admin = { host: '127.0.0.1', port: 0, ...(config.admin ?? {}) };
    config.log = { dir: join(this.dir, 'data'), ...(config.log ?? {}) };
    this.host = connectHost(config.server.host);
    this.adminHost = connectHost(config.admin.host);
    config.node_id ??= 'test-node';
    config.routes ??= [{ name: 'leads', path: '/leads' }];
    this.configFile = join(this.dir, 'crowd.json');
    writeFileSync(this.configFile, JSON.stringify(config, null, 2));
  }

  get logDir(): string {
    return join(this.dir, 'data');
  }

  url(path: string): string {
    return `http://${this.host}:${this.port}${path}`;
  }

  adminUrl(path: string): string {
    return `http://${this.adminHost}:${this.adminPort}${path}`;
  }

  /** Spawns crowd and resolves once it logged "listening" (rejects if it exits first). */
  start(timeoutMs = 15_000): Promise<this> {
    const cmd = [...(this.opts.wrap ?? []), process.execPath, BIN, 'start', '-c', this.configFile];
    const proc = spawn(cmd[0]!, cmd.slice(1), { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.opts.env } });
    this.proc = proc;
    this.exited = new Promise((res) => proc.once('exit', (code, signal) => res({ code, signal })));
    const rl = createInterface({ input: proc.stdout! });
    const errLines = createInterface({ input: proc.stderr! });
    errLines.on('line', (l) => this.lines.push(l));
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`crowd did not start within ${timeoutMs} ms:\n${this.lines.join('\n')}`)), timeoutMs);
      rl.on('line', (line) => {
        this.lines.push(line);
        if (line.includes('"event":"listening"')) {
          const j = JSON.parse(line);
          this.port = j.port;
          this.adminPort = j.admin_port;
          clearTimeout(timer);
          res(this);
        }
      });
      void this.exited!.then((e) => {
        clearTimeout(timer);
        rej(new Error(`crowd exited (${e.code ?? e.signal}) before listening:\n${this.lines.join('\n')}`));
      });
    });
  }

  waitExit(): Promise<ExitInfo> {
    if (!this.exited) throw new Error('crowd was not started');
    return this.exited;
  }

  async kill9(): Promise<ExitInfo> {
    this.proc?.kill('SIGKILL');
    return this.waitExit();
  }

  async sigterm(): Promise<ExitInfo> {
    this.proc?.kill('SIGTERM');
    return this.waitExit();
  }

  async restart(): Promise<this> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) await this.kill9();
    return this.start();
  }

  /** The log's last offset, from the admin API's /status. */
  async lastOffset(): Promise<number> {
    const r = await request(this.adminUrl('/status'), { method: 'GET' });
    return JSON.parse(r.body).log.last_offset;
  }

  /** The stored requests as `crowd tail` prints them (one object per entry). */
  async tail(): Promise<any[]> {
    const r = await runCli(['tail', '-c', this.configFile]);
    if (r.code !== 0) throw new Error(`crowd tail exited ${r.code}: ${r.stderr}`);
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  }

  /** Stops the process if it still runs (for t.teardown). */
  async stop(): Promise<void> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) await this.kill9();
  }
}

/**
 * The URL host that reaches a listener bound to `host`: the address itself when it is a
 * specific IP (e.g. a network namespace's, see netns.ts), 127.0.0.1 for 0.0.0.0, :: or a name.
 */
function connectHost(host: unknown): string {
  if (typeof host !== 'string' || host === '0.0.0.0' || host === '::') return '127.0.0.1';
  const family = isIP(host);
  if (family === 4) return host;
  if (family === 6) return `[${host}]`;
  return '127.0.0.1';
}

/** Runs `bin/crowd <args>` to completion. */
export function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const proc = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => (stdout += d));
    proc.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rej(new Error(`crowd ${args.join(' ')} timed out`));
    }, opts.timeoutMs ?? 20_000);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}
