/**
 * ingest: crowd (fsync before every ack, no targets) against the uWS no-op server (the
 * ceiling), a naive node:http server that fdatasyncs every request, Redis 7 taking XADD with
 * appendfsync always, and NATS JetStream taking publish-with-ack, at 16, 64 and 256
 * concurrent connections, one system after the other on the same machine.
 */
import { join } from 'node:path';
import { natsSyncAlwaysSupported, requireTools, runNaive, runNats, runRedis, stopAll, type SystemRun } from '../baselines/systems';
import { onCleanup, progress, removeTemp } from '../lib/proc';
import { BODY, CONTENT_TYPE, PATH, settled, startCrowd, startNoop } from '../lib/servers';
import type { Scenario, ScenarioResult } from '../lib/types';
import { okRate, requireWrk, runWrk, writeWrkScript, wrkVersion, type WrkResult } from '../lib/wrk';

const CONNECTIONS = [16, 64, 256] as const;
const THREADS = 2;

interface Row {
  system: string;
  connections: number;
  rate: number;
  p50_ms: number | null;
  p99_ms: number | null;
  errors: number;
  detail?: unknown;
}

function fromWrk(system: string, connections: number, w: WrkResult): Row {
  const e = w.errors;
  return { system, connections, rate: okRate(w), p50_ms: w.latency_us.p50 / 1000, p99_ms: w.latency_us.p99 / 1000, errors: e.connect + e.read + e.write + e.timeout + e.status, detail: w };
}

function fromSystem(name: string, r: SystemRun): Row {
  return { system: name, connections: r.connections, rate: r.rate, p50_ms: r.latency_ms?.p50 ?? null, p99_ms: r.latency_ms?.p99 ?? null, errors: r.errors, detail: r };
}

export const scenario: Scenario = {
  name: 'ingest',
  describe: 'crowd vs the uWS no-op ceiling, a naive fsync server, Redis (appendfsync always) and NATS JetStream',
  async run(ctx): Promise<ScenarioResult> {
    requireWrk();
    // Every comparison system must be there: a partial table would read as a result.
    requireTools(['redis-server', 'redis-benchmark', 'redis-cli', 'nats-server']);
    onCleanup(stopAll);
    const natsDurable = natsSyncAlwaysSupported();
    const natsLabel = natsDurable ? 'NATS JetStream publish+ack (sync always)' : 'NATS JetStream publish+ack (no fsync before ack)';
    // Quick: 15 measured runs (5 systems x 3 connection counts) must fit the suite's 3 minutes.
    const seconds = ctx.full ? 10 : 2;
    const warmup = ctx.full ? 2 : 1;
    const script = writeWrkScript(ctx.dir, 'ingest', BODY, CONTENT_TYPE);
    const rows: Row[] = [];
    const failures: string[] = [];
    const attempt = async (what: string, fn: () => Promise<Row>) => {
      try {
        rows.push(await fn());
      } catch (err) {
        failures.push(`${what}: ${(err as Error).message}`);
        progress(`ingest: ${what} failed: ${(err as Error).message.split('\n')[0]}`);
      }
    };
    for (const c of CONNECTIONS) {
      progress(`ingest: ${c} connections`);
      await attempt(`no-op ${c}`, async () => {
        const noop = await startNoop();
        try {
          const url = `http://127.0.0.1:${noop.port}${PATH}`;
          await runWrk(url, { seconds: warmup, connections: c, threads: THREADS, script });
          return fromWrk('uWS no-op (ceiling)', c, await runWrk(url, { seconds, connections: c, threads: THREADS, script }));
        } finally {
          await noop.stop();
        }
      });
      await attempt(`crowd ${c}`, async () => {
        const dir = join(ctx.dir, `crowd-${c}`);
        const crowd = await startCrowd(dir);
        try {
          const url = `http://127.0.0.1:${crowd.port}${PATH}`;
          await runWrk(url, { seconds: warmup, connections: c, threads: THREADS, script });
          const before = await settled(crowd);
          const w = await runWrk(url, { seconds, connections: c, threads: THREADS, script });
          const after = await settled(crowd);
          const row = fromWrk('crowd', c, w);
          const acked = w.requests - w.errors.status;
          const stored = after.log.last_offset - before.log.last_offset;
          // Every 2xx is a stored request: fewer stored than acknowledged would be a loss.
          if (stored < acked) throw new Error(`crowd acknowledged ${acked} requests but stored ${stored}`);
          row.detail = { wrk: w, acknowledged: acked, stored };
          return row;
        } finally {
          await crowd.stop();
          removeTemp(dir);
        }
      });
      await attempt(`naive ${c}`, async () => fromSystem('naive (node:http + fdatasync each)', await runNaive({ connections: c, seconds, warmupSeconds: warmup, threads: THREADS, body: BODY, contentType: CONTENT_TYPE, tmpDir: ctx.dir })));
      await attempt(`redis ${c}`, async () => fromSystem('Redis XADD (appendfsync always)', await runRedis({ connections: c, seconds, body: BODY, tmpDir: ctx.dir })));
      await attempt(`nats ${c}`, async () => fromSystem(natsLabel, await runNats({ connections: c, seconds, warmupSeconds: warmup, body: BODY, tmpDir: ctx.dir, ...(natsDurable ? { sync: 'always' as const } : {}) })));
    }
    stopAll();
    if (failures.length > 0) progress(`ingest: ${failures.length} runs failed; see params.failures in bench/results/ingest.json`);
    const rate = (system: string, c: number) => rows.find((r) => r.system.startsWith(system) && r.connections === c)?.rate ?? null;
    const systems = [...new Set(rows.map((r) => r.system))];
    const f = (n: number | null, d = 0) => (n === null ? '-' : n.toFixed(d));
    const table: string[][] = [['system', 'connections', 'req/s', 'x ceiling', 'p50 ms', 'p99 ms', 'errors']];
    for (const c of CONNECTIONS) {
      const ceiling = rate('uWS no-op', c);
      for (const r of rows.filter((x) => x.connections === c)) table.push([r.system, `${c}`, f(r.rate), ceiling ? (r.rate / ceiling).toFixed(2) : '-', f(r.p50_ms, 2), f(r.p99_ms, 2), `${r.errors}`]);
    }
    const crowd256 = rate('crowd', 256);
    const ratio = (other: string): number | null => {
      const o = rate(other, 256);
      return crowd256 !== null && o ? crowd256 / o : null;
    };
    const goal = (name: string, target: number, other: string, note: string) => {
      const r = ratio(other);
      const why = failures.find((f) => f.startsWith('crowd ') || f.toLowerCase().startsWith(other.split(' ')[0]!.toLowerCase()));
      return { name, target: `>= ${target} x`, measured: r === null ? 'not measured' : `${r.toFixed(2)} x`, met: r !== null && r >= target, note: r === null ? `not measured: ${why ?? 'a run failed'}` : r >= target ? undefined : `on the reference machine: ${note}` };
    };
    return {
      scenario: 'ingest',
      title: 'Ingest throughput: crowd against its ceiling and the alternatives',
      method: `wrk (${THREADS} threads) POSTs a ${Buffer.byteLength(BODY)}-byte JSON body for ${seconds} s after a ${warmup} s warm-up at each connection count; Redis is driven by redis-benchmark (XADD) and JetStream by a Node publisher keeping that many publishes in flight. Every system acknowledges only what is on disk, except where the detail says otherwise (JetStream's sync policy).`,
      params: { connections: CONNECTIONS, seconds, warmup_seconds: warmup, threads: THREADS, body: BODY, wrk: wrkVersion(), failures },
      table,
      goals: [
        goal('crowd vs uWS no-op ceiling at 256 connections', 0.75, 'uWS no-op', "every ack waits for its group commit; with one commit in flight crowd's main thread is about half idle under this load (node --cpu-prof), and wrk takes most of a core of the two"),
        goal(
          'crowd vs Redis XADD with appendfsync always at 256',
          1.0,
          'Redis',
          "an LMDB commit costs two device syncs (fdatasync of the data pages, then a synchronous write of the meta page; strace shows both), Redis one fdatasync of its append-only file per event-loop turn; crowd's main thread waits on the commit, not on CPU",
        ),
        goal('crowd vs naive fdatasync-per-request server at 256', 6, 'naive', 'the naive server is faster than it should be when the disk makes fdatasync cheap'),
      ],
      charts: [
        { title: 'Requests per second by connections', unit: 'req/s', series: systems.map((s) => ({ name: s, points: rows.filter((r) => r.system === s).map((r) => ({ x: `${r.connections} conns`, y: Math.round(r.rate) })) })) },
        { title: 'p99 ack latency by connections', unit: 'ms', series: systems.map((s) => ({ name: s, points: rows.filter((r) => r.system === s && r.p99_ms !== null).map((r) => ({ x: `${r.connections} conns`, y: Number(r.p99_ms!.toFixed(2)) })) })) },
      ],
      data: { rows, failures },
      shared: crowd256 !== null ? { crowd_max_rps: crowd256 } : {},
    };
  },
};
