/**
 * A bare HTTP client for the drain benchmark: sends `--count` requests as fast as
 * `--connections` keep-alive connections allow (an undici Pool, pipelining 1, one request in
 * flight per connection, the undici crowd itself delivers with), and prints one JSON line.
 *
 *   node dist/bench/undici-client.js --url URL --count N [--connections C] [--crowd-headers] [--deadline S]
 *
 * The drain benchmark runs it twice: to preload crowd (POST /leads to crowd's ingest port,
 * every answer must be 200), and as the ceiling of delivery (the same requests straight to
 * the no-op upstream, with `--crowd-headers`: the headers crowd's http sink adds). It runs in
 * its own process so that it shares no event loop with the harness.
 *
 * Output: `{"requests":N,"ok":N2xx,"statuses":{"200":N},"errors":E,"first_error":...,
 * "seconds":S,"msg_per_s":R,"cpu_user_s":U,"cpu_system_s":S,"timed_out":false,"undici":"7.x"}`. Exit 0 when it ran to the
 * end (whatever the statuses), 3 when `--deadline` passed first (the line is printed anyway,
 * with what was done), 2 on bad flags, 1 on any other failure.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

/** The same body as the ingest benchmark (bench/drain.ts records it in its results). */
const BODY = '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}';
const CONTENT_TYPE = 'application/json';

/** crowd's http sink uses these (src/delivery/sinks/http.ts), with timeouts at the 10 s default. */
const TIMEOUT_MS = 10_000;

interface Result {
  requests: number;
  ok: number;
  statuses: Record<string, number>;
  errors: number;
  first_error: string | null;
  seconds: number;
  msg_per_s: number;
  /** CPU time of this process (all threads) from the first request to the last response. */
  cpu_user_s: number;
  cpu_system_s: number;
  timed_out: boolean;
  undici: string;
}

function undiciVersion(): string {
  try {
    return (JSON.parse(readFileSync(join(dirname(require.resolve('undici')), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        count: { type: 'string' },
        connections: { type: 'string', default: '64' },
        'crowd-headers': { type: 'boolean', default: false },
        deadline: { type: 'string', default: '0' },
      },
    }));
    if (!values.url) throw new Error('--url is required');
    if (!values.count) throw new Error('--count is required');
  } catch (err) {
    process.stderr.write(`undici-client: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const url = new URL(values.url);
  const count = Number(values.count);
  const connections = Number(values.connections);
  const deadlineS = Number(values.deadline);
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(connections) || connections < 1 || !(deadlineS >= 0)) {
    process.stderr.write('undici-client: --count and --connections must be whole numbers >= 1, --deadline a number of seconds >= 0\n');
    process.exit(2);
  }
  const crowdHeaders = values['crowd-headers'];
  const path = url.pathname + url.search;
  const body = Buffer.from(BODY);
  const pool = new Pool(url.origin, {
    connections,
    pipelining: 1,
    connectTimeout: TIMEOUT_MS,
    headersTimeout: TIMEOUT_MS,
    bodyTimeout: TIMEOUT_MS,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
  });

  /** What crowd's sink sends for a request stored from this client (see upstreamHeaders). */
  const headersFor = (): string[] => {
    if (!crowdHeaders) return ['content-type', CONTENT_TYPE];
    const id = randomUUID();
    return [
      'content-type', CONTENT_TYPE,
      'idempotency-key', id,
      'crowd-id', id,
      'crowd-attempt', '1',
      'crowd-received-at', new Date().toISOString(),
      'x-forwarded-for', '127.0.0.1',
      'x-forwarded-proto', 'http',
      'x-forwarded-host', url.host,
    ];
  };

  const statuses: Record<string, number> = {};
  let started = 0;
  let done = 0;
  let ok = 0;
  let errors = 0;
  let firstError: string | null = null;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const result = (timedOut: boolean): Result => {
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return {
      requests: done,
      ok,
      statuses,
      errors,
      first_error: firstError,
      seconds,
      msg_per_s: ok / seconds,
      cpu_user_s: cpu.user / 1e6,
      cpu_system_s: cpu.system / 1e6,
      timed_out: timedOut,
      undici: undiciVersion(),
    };
  };
  if (deadlineS > 0) {
    setTimeout(() => {
      process.stdout.write(`${JSON.stringify(result(true))}\n`);
      process.exit(3);
    }, deadlineS * 1000).unref();
  }

  // `connections` loops, each with one request in flight: the pool never queues.
  const worker = async (): Promise<void> => {
    while (started < count) {
      started++;
      try {
        const res = await pool.request({ method: 'POST', path, headers: headersFor(), body });
        await res.body.dump({ limit: 64 * 1024 });
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
        if (res.statusCode >= 200 && res.statusCode < 300) ok++;
      } catch (err) {
        errors++;
        const e = err as Error & { code?: string };
        firstError ??= `${e.code ? e.code + ' ' : ''}${e.message}`;
      }
      done++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(connections, count) }, worker));
  const r = result(false);
  process.stdout.write(`${JSON.stringify(r)}\n`);
  await pool.destroy().catch(() => undefined);
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`undici-client: ${err.message}\n`);
    process.exit(1);
  },
);
