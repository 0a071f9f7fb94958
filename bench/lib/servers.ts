/** crowd and the uWS no-op server as benchmark subjects, and crowd's admin API. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIST, CROWD_BIN, Child, ROOT, sleep } from './proc';

export const PATH = '/leads';
/** The request every scenario sends unless it varies the payload. */
export const BODY = '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}';
export const CONTENT_TYPE = 'application/json';

/** Starts the uWS no-op server (the ceiling); `port` 0 lets the kernel pick. */
export async function startNoop(opts: { port?: number; count?: boolean } = {}): Promise<Child> {
  const args = [join(BENCH_DIST, 'noop-server.js'), '--port', String(opts.port ?? 0)];
  if (opts.count) args.push('--count');
  const server = new Child('no-op server', process.execPath, args, { cwd: ROOT, stdin: 'pipe' });
  await server.waitFor((line) => {
    if (!/^\d+$/.test(line)) return false;
    server.port = Number(line);
    return true;
  });
  return server;
}

/** What the counting no-op server (`startNoop({ count: true })`) answered: wall-clock ms of its first and last answer, null before any. */
export interface NoopStats {
  count: number;
  first_at: number | null;
  last_at: number | null;
}

/** Asks a counting no-op server for its figures ("stats" on its stdin). */
export async function noopStats(noop: Child): Promise<NoopStats> {
  let stats: NoopStats | null = null;
  const got = noop.waitFor(
    (line) => {
      if (!line.startsWith('{"count"')) return false;
      stats = JSON.parse(line) as NoopStats;
      return true;
    },
    5_000,
    'answer "stats"',
  );
  noop.proc.stdin!.write('stats\n');
  await got;
  return stats!;
}

/** Sets a counting no-op server's figures back to zero. */
export function noopReset(noop: Child): void {
  noop.proc.stdin!.write('reset\n');
}

/**
 * Starts `bin/crowd start` on a JSON config in `dir` (ports 0; the config tree is merged over
 * a default of one route /leads without targets). Resolves once it logged "listening".
 */
export async function startCrowd(dir: string, config: Record<string, unknown> = {}, opts: { nodeArgs?: string[]; timeoutMs?: number } = {}): Promise<Child & { configFile: string; listeningAt: number }> {
  mkdirSync(dir, { recursive: true });
  const configFile = join(dir, 'crowd.json');
  const full = {
    server: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: { dir: join(dir, 'data') },
    routes: [{ name: 'leads', path: PATH }],
    ...config,
  };
  writeFileSync(configFile, JSON.stringify(full, null, 2));
  const server = new Child('crowd', process.execPath, [...(opts.nodeArgs ?? []), CROWD_BIN, 'start', '-c', configFile], { cwd: dir }) as Child & { configFile: string; listeningAt: number };
  server.configFile = configFile;
  await server.waitFor((line) => {
    if (!line.includes('"event":"listening"')) return false;
    const j = JSON.parse(line) as { port: number; admin_port: number };
    server.port = j.port;
    server.adminPort = j.admin_port;
    server.listeningAt = Date.now();
    return true;
  }, opts.timeoutMs);
  return server;
}

/** GET a JSON document from crowd's admin API. */
export async function adminJson<T>(crowd: Child, path: string): Promise<T> {
  const url = `http://127.0.0.1:${crowd.adminPort}${path}`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    const cause = (err as Error).cause as Error | undefined;
    throw new Error(`GET ${url} failed: ${cause?.message ?? (err as Error).message}`);
  }
  if (!res.ok) throw new Error(`GET ${url} answered ${res.status}`);
  return (await res.json()) as T;
}

export interface CrowdStatus {
  version?: string;
  state: string;
  ready: boolean;
  ingest: { port: number | null };
  log: { first_offset: number; last_offset: number; durable_offset: number; pending_writes: number; bytes: number };
  targets: { name: string; state: string; offset: number; lag: number; delivered: number; dead_letters: number; in_flight: number; retrying: number }[];
}

export function crowdStatus(crowd: Child): Promise<CrowdStatus> {
  return adminJson<CrowdStatus>(crowd, '/status');
}

/** Waits until crowd's log holds still: nothing pending, durable = last, unchanged across two polls. */
export async function settled(crowd: Child, timeoutMs = 30_000): Promise<CrowdStatus> {
  const deadline = Date.now() + timeoutMs;
  let previous = -1;
  let why = 'no answer';
  for (;;) {
    if (!crowd.running) throw crowd.failure('exited while its log was being read');
    try {
      const s = await crowdStatus(crowd);
      const { last_offset, durable_offset, pending_writes } = s.log;
      if (pending_writes === 0 && durable_offset === last_offset && last_offset === previous) return s;
      why = `last ${last_offset}, durable ${durable_offset}, pending ${pending_writes}`;
      previous = last_offset;
    } catch (err) {
      why = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`crowd's log did not settle within ${timeoutMs} ms (${why})`);
    await sleep(100);
  }
}
