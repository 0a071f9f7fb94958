/**
 * replication: three crowd nodes on loopback, the same wrk load against one of them, once
 * with cluster.ack = "local" and once with "quorum" (min_insync 2), fresh nodes each time.
 * Reports req/s, p50/p99, the ratio quorum/local and, under local acks, how far the peers
 * lag behind the leader (sampled from its /status during the run).
 *
 * Then takeover: a backlog of N requests on node a (its target delivers at 1 request/s), a
 * killed with SIGKILL once both peers hold all of it; the time from the kill to the first
 * request the upstream gets from the taker, and the taker's drain rate against a local drain
 * of the same N requests by a single node, to the same upstream, in the same run.
 */
import os from 'node:os';
import { join } from 'node:path';
import { runClient, type ClientResult } from '../lib/client';
import { cpuSeconds, freePort, progress, sleep, type Child } from '../lib/proc';
import { adminJson, BODY, CONTENT_TYPE, crowdStatus, noopReset, noopStats, PATH, settled, startCrowd, startNoop, type NoopStats } from '../lib/servers';
import type { Goal, Scenario, ScenarioResult } from '../lib/types';
import { okRate, requireWrk, runWrk, writeWrkScript, type WrkResult } from '../lib/wrk';

const CONNECTIONS = [16, 256] as const;
const GOAL_RATIO = 0.5;
const SECRET = 'bench-cluster-secret-0123456789';

interface PeerJson {
  url: string;
  state: string;
  lag: number | null;
}

// ---------------------------------------------------------------------------------------------
// Takeover

/** Short for the bench (the default is 15 s; the minimum 1 s). */
const TAKEOVER_AFTER_MS = 2000;
/** The taker's drain rate against a local drain of the same backlog. */
const TAKEOVER_GOAL = 0.8;
/** Node a's target rate (requests/s): its backlog stays in place until the kill. */
const SLOW_RATE = 1;
/** The target's concurrency on every node (and the local one): the drain benchmark's. */
const DRAIN_CONCURRENCY = 64;
const LOAD_CONNECTIONS = 64;
const TARGET_NAME = 'upstream';
const POLL_MS = 100;

interface TargetJson {
  name: string;
  state: string;
  offset: number;
  lag: number;
  delivered: number;
  dead_letters: number;
}

interface ReplicaJson {
  origin: string;
  incarnation: string;
  flushed_offset: number;
  finished: Record<string, number>;
  delivered_by?: string;
  targets?: (TargetJson & { committed_offset: number })[];
}

interface ClusterStatusJson {
  log: { last_offset: number };
  targets: TargetJson[];
  peers: (PeerJson & { flushed_offset: number | null })[];
  cluster: { replicas: ReplicaJson[] };
}

/** One backlog drain, timed by the upstream's own clock (its first and last answer). */
interface DrainRun {
  /** Requests the upstream answered during this drain. */
  received: number;
  /** When the drain could start: the upstream's start (local) or the kill (takeover), epoch ms. */
  start_at: number;
  /** From start_at to the upstream's first answer. */
  first_delivery_ms: number;
  /** From the first answer to the last. */
  drain_ms: number;
  /** received / drain_ms. */
  msg_per_s: number;
  /** CPU seconds of the delivering crowd up to lag 0 (from the upstream's start, or from just before the taker began), and per delivered request. */
  cpu_s: number | null;
  cpu_us_per_msg: number | null;
}

interface TakeoverResult {
  count: number;
  local: DrainRun & { load: ClientResult };
  takeover: DrainRun & {
    load: ClientResult;
    taker: string;
    /** Requests node a delivered itself before the kill (at SLOW_RATE). */
    delivered_by_a: number;
    /** The taker's figures for the replica's target at lag 0. */
    taker_target: TargetJson | null;
    /** The taker's takeover_start log line (where it started), when still in its output tail. */
    takeover_start: unknown;
    /** From that line's time to the upstream's first request (the taker counts the backlog first). */
    takeover_start_to_first_delivery_ms: number | null;
  };
  ratio: number;
  /** Local CPU µs per request over the taker's: above 1, the taker spends less per request. */
  cpu_ratio: number | null;
  /** The machine's load average when this part started and ended (other work on it moves the figures). */
  loadavg_at_start: number[];
  loadavg_at_end: number[];
}

/**
 * Polls `probe` every POLL_MS until it returns something other than null; fails after
 * `timeoutMs` (saying `what`, and `why()` or the last error of the probe), or at once when one
 * of `alive` exited.
 */
async function until<T>(what: string, timeoutMs: number, alive: readonly Child[], probe: () => Promise<T | null>, why: () => string = () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let error = '';
  for (;;) {
    for (const c of alive) if (!c.running) throw c.failure(`exited (${what})`);
    let v: T | null = null;
    try {
      v = await probe();
      error = '';
    } catch (err) {
      // An admin request lost under load: the next poll says more.
      error = (err as Error).message;
    }
    if (v !== null) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${(timeoutMs / 1000).toFixed(0)} s (${why() || error || 'no answer'})`);
    await sleep(POLL_MS);
  }
}

function targetConfig(port: number, rate = 0): Record<string, unknown> {
  return { name: TARGET_NAME, type: 'http', url: `http://127.0.0.1:${port}`, concurrency: DRAIN_CONCURRENCY, rate, retry: { base: '50ms', max: '500ms' } };
}

const ROUTES = [{ name: 'leads', path: PATH, targets: [TARGET_NAME] }];

async function load(crowd: Child, count: number, what: string): Promise<ClientResult> {
  const deadlineS = Math.ceil(60 + count / 1000);
  progress(`takeover: ${what}: ${count} requests over ${LOAD_CONNECTIONS} connections (at most ${deadlineS} s)`);
  const r = await runClient(`http://127.0.0.1:${crowd.port}${PATH}`, count, LOAD_CONNECTIONS, deadlineS);
  if (!crowd.running) throw crowd.failure(`exited during the load (${what})`);
  if (r.ok !== count || r.errors > 0) throw new Error(`takeover: ${what}: ${r.ok} of ${count} requests answered 2xx (statuses ${JSON.stringify(r.statuses)}, ${r.errors} errors, the first: ${r.first_error})`);
  return r;
}

function drainRun(stats: NoopStats, startAt: number, cpu: number | null): DrainRun {
  if (stats.first_at === null || stats.last_at === null) throw new Error('the upstream answered nothing');
  const drainMs = Math.max(1, stats.last_at - stats.first_at);
  return {
    received: stats.count,
    start_at: startAt,
    first_delivery_ms: stats.first_at - startAt,
    drain_ms: drainMs,
    msg_per_s: stats.count / (drainMs / 1000),
    cpu_s: cpu,
    cpu_us_per_msg: cpu === null ? null : (cpu * 1e6) / stats.count,
  };
}

const minus = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : a - b);

/**
 * 1. Local: one fresh node, its target on a port nothing listens on; N requests loaded; the
 *    no-op upstream starts there and the node drains the backlog.
 * 2. Takeover: the same upstream (counts reset); three fresh nodes (quorum acks, min_insync 2,
 *    takeover_after 2 s), node a's target at SLOW_RATE; N requests loaded into a; once both
 *    peers hold them all, a gets SIGKILL and the taker drains a's backlog from its replica.
 */
async function measureTakeover(dir: string, count: number): Promise<TakeoverResult> {
  const loadavgAtStart = os.loadavg();
  const upstreamPort = await freePort();
  const drainBoundMs = (count / 1000) * 1000 + 60_000;
  let upstream: Child | null = null;
  try {
    // 1. Local drain.
    let local: TakeoverResult['local'];
    {
      const node = await startCrowd(join(dir, 'takeover-local'), { routes: ROUTES, targets: [targetConfig(upstreamPort)] });
      try {
        const l = await load(node, count, 'local node');
        let why = '';
        await until('takeover: the local node storing the load', 30_000, [node], async () => {
          const s = await settled(node);
          const t = s.targets[0]!;
          why = `target lag ${t.lag}, ${t.delivered} delivered`;
          return t.lag === count && t.delivered === 0 ? s : null;
        }, () => why);
        upstream = await startNoop({ port: upstreamPort, count: true });
        if (upstream.port !== upstreamPort) throw upstream.failure(`listens on port ${upstream.port}, not ${upstreamPort}`);
        const startAt = Date.now();
        const cpu0 = cpuSeconds(node.pid);
        progress(`takeover: local drain of ${count} requests`);
        await until('takeover: the local drain (lag 0)', drainBoundMs, [node, upstream], async () => {
          const s = await crowdStatus(node);
          const t = s.targets[0]!;
          why = `lag ${t.lag}, offset ${t.offset} of ${s.log.last_offset}, ${t.delivered} delivered, target ${t.state}`;
          return t.state !== 'starting' && t.lag === 0 && t.offset >= s.log.last_offset ? t : null;
        }, () => why);
        const cpu = minus(cpuSeconds(node.pid), cpu0);
        local = { ...drainRun(await noopStats(upstream), startAt, cpu), load: l };
        if (local.received !== count) throw new Error(`takeover: the local drain: the upstream answered ${local.received} requests, expected ${count}`);
      } finally {
        await node.stop();
      }
    }
    progress(`takeover: local drain ${local.msg_per_s.toFixed(0)} msg/s (${local.drain_ms} ms first to last)`);

    // 2. Takeover.
    noopReset(upstream);
    const ports = [await freePort(), await freePort(), await freePort()];
    const nodes: Child[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const id = 'abc'[i]!;
        const peers = ports.filter((_, j) => j !== i).map((p) => `http://127.0.0.1:${p}`);
        nodes.push(
          await startCrowd(join(dir, `takeover-${id}`), {
            node_id: id,
            server: { host: '127.0.0.1', port: ports[i] },
            routes: ROUTES,
            targets: [targetConfig(upstreamPort, i === 0 ? SLOW_RATE : 0)],
            cluster: { peers, secret: SECRET, ack: 'quorum', min_insync: 2, takeover_after: `${TAKEOVER_AFTER_MS}ms` },
          }),
        );
      }
      const [a, b, c] = nodes as [Child, Child, Child];
      let why = '';
      await until('takeover: the peers of node a connecting', 15_000, nodes, async () => {
        const s = await adminJson<ClusterStatusJson>(a, '/status');
        why = JSON.stringify(s.peers.map((p) => [p.url, p.state, p.lag]));
        return s.peers.every((p) => p.state === 'connected' && p.lag !== null) ? s : null;
      }, () => why);
      const l = await load(a, count, 'node a (quorum acks)');
      const before = await until('takeover: both peers holding all of node a\'s log', 30_000, nodes, async () => {
        const st = await settled(a);
        const s = await adminJson<ClusterStatusJson>(a, '/status');
        why = `last offset ${st.log.last_offset}, peers ${JSON.stringify(s.peers.map((p) => [p.url, p.state, p.lag]))}`;
        return st.log.last_offset >= count && s.peers.every((p) => p.lag === 0) ? s : null;
      }, () => why);
      const deliveredByA = before.targets[0]!.delivered;
      // What a delivered at its slow rate stays out of the taker's count: reset once a is gone
      // (no taker can deliver within takeover_after, at least 1 s, of a's last heartbeat).
      const killedAt = Date.now();
      a.proc.kill('SIGKILL');
      await a.exited;
      await sleep(50);
      noopReset(upstream);
      progress(`takeover: node a killed (SIGKILL) with ${count - deliveredByA} requests undelivered; waiting for a peer to deliver them (takeover_after ${TAKEOVER_AFTER_MS} ms)`);
      // The taker's CPU time counts from the poll before the one that saw it deliver (at most
      // POLL_MS before its first request), not from the kill: its wait is not part of the drain.
      let cpuBefore: (number | null)[] = [null, null];
      let cpuNow: (number | null)[] = [null, null];
      const taker = await until('takeover: a peer delivering node a\'s log', TAKEOVER_AFTER_MS + 20_000, [b, c, upstream], async () => {
        cpuBefore = cpuNow;
        cpuNow = [b, c].map((n) => cpuSeconds(n.pid));
        for (const n of [b, c]) {
          const s = await adminJson<ClusterStatusJson>(n, '/status');
          const r = s.cluster.replicas.filter((x) => x.origin === 'a').at(-1);
          if (r?.delivered_by === 'this node') return n;
        }
        return null;
      });
      const takerId = taker === b ? 'b' : 'c';
      let last: ReplicaJson | null = null;
      await until(`takeover: node ${takerId} draining a's backlog (lag 0)`, drainBoundMs, [b, c, upstream], async () => {
        const s = await adminJson<ClusterStatusJson>(taker, '/status');
        last = s.cluster.replicas.filter((x) => x.origin === 'a').at(-1) ?? null;
        const t = last?.targets?.[0];
        why = t ? `lag ${t.lag}, offset ${t.offset} of ${last!.flushed_offset}, ${t.delivered} delivered, target ${t.state}` : `no target in ${JSON.stringify(last)}`;
        // Lag alone is not enough: it reads 0 while the target is "starting" (counting the backlog).
        return t && t.state !== 'starting' && t.lag === 0 && t.offset >= last!.flushed_offset ? t : null;
      }, () => why);
      const cpu = minus(cpuSeconds(taker.pid), cpuBefore[taker === b ? 0 : 1]!);
      const run = drainRun(await noopStats(upstream), killedAt, cpu);
      const startLine = taker.tail.find((x) => x.includes('"event":"takeover_start"'));
      const takerTarget = (last as ReplicaJson | null)?.targets?.[0] ?? null;
      const started = startLine ? (JSON.parse(startLine) as { time?: string }) : null;
      const startedAt = started?.time ? Date.parse(started.time) : NaN;
      if (run.received < count - deliveredByA) throw new Error(`takeover: the upstream answered ${run.received} requests from the taker, expected at least ${count - deliveredByA}`);
      const takeover: TakeoverResult['takeover'] = {
        ...run,
        load: l,
        taker: takerId,
        delivered_by_a: deliveredByA,
        taker_target: takerTarget,
        takeover_start: started,
        takeover_start_to_first_delivery_ms: Number.isFinite(startedAt) ? run.start_at + run.first_delivery_ms - startedAt : null,
      };
      progress(`takeover: first delivery by ${takerId} ${run.first_delivery_ms} ms after the kill; ${run.received} delivered at ${run.msg_per_s.toFixed(0)} msg/s`);
      const cpuRatio = local.cpu_us_per_msg === null || run.cpu_us_per_msg === null ? null : local.cpu_us_per_msg / run.cpu_us_per_msg;
      return { count, local, takeover, ratio: takeover.msg_per_s / local.msg_per_s, cpu_ratio: cpuRatio, loadavg_at_start: loadavgAtStart, loadavg_at_end: os.loadavg() };
    } finally {
      for (const n of nodes) await n.stop();
    }
  } finally {
    if (upstream) await upstream.stop();
  }
}

interface Run {
  ack: 'local' | 'quorum';
  connections: number;
  wrk: WrkResult;
  rps: number;
  /** Peers' lag behind the leader (entries), sampled every 100 ms during the run. */
  lag: { max: number; mean: number; samples: number; after: number };
}

export const scenario: Scenario = {
  name: 'replication',
  describe: '3 nodes on loopback: wrk against one node with cluster.ack = "local" and "quorum"; req/s, p50/p99, quorum/local, replication lag; takeover of a killed node\'s backlog vs a local drain',
  async run(ctx): Promise<ScenarioResult> {
    requireWrk();
    const seconds = ctx.full ? 10 : 3;
    const warmup = ctx.full ? 2 : 1;
    const runs: Run[] = [];
    for (const ack of ['local', 'quorum'] as const) {
      const ports = [await freePort(), await freePort(), await freePort()];
      const nodes = [];
      try {
        for (let i = 0; i < 3; i++) {
          const id = 'abc'[i]!;
          const peers = ports.filter((_, j) => j !== i).map((p) => `http://127.0.0.1:${p}`);
          nodes.push(
            await startCrowd(join(ctx.dir, `${ack}-${id}`), {
              node_id: id,
              server: { host: '127.0.0.1', port: ports[i] },
              cluster: { peers, secret: SECRET, ack, min_insync: 2 },
            }),
          );
        }
        const leader = nodes[0]!;
        const script = writeWrkScript(ctx.dir, `replication-${ack}`, BODY, CONTENT_TYPE);
        const url = `http://127.0.0.1:${leader.port}${PATH}`;
        // Until both peers follow the leader (a quorum request before that gets 503).
        for (let tries = 0; ; tries++) {
          const s = await adminJson<{ peers: PeerJson[] }>(leader, '/status');
          if (s.peers.every((p) => p.state === 'connected' && p.lag !== null)) break;
          if (tries > 100) throw new Error(`the peers did not connect: ${JSON.stringify(s.peers)}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        for (const connections of CONNECTIONS) {
          progress(`replication: ack = "${ack}", ${connections} connections, ${seconds} s after ${warmup} s`);
          await runWrk(url, { seconds: warmup, connections, threads: 2, script });
          const lags: number[] = [];
          let sampling = true;
          const sampler = (async () => {
            while (sampling) {
              try {
                const s = await adminJson<{ peers: PeerJson[] }>(leader, '/status');
                for (const p of s.peers) if (p.lag !== null) lags.push(p.lag);
              } catch {
                /* a sample lost under load */
              }
              await new Promise((r) => setTimeout(r, 100));
            }
          })();
          const w = await runWrk(url, { seconds, connections, threads: 2, script });
          sampling = false;
          await sampler;
          const after = await adminJson<{ peers: PeerJson[] }>(leader, '/status');
          runs.push({
            ack,
            connections,
            wrk: w,
            rps: okRate(w),
            lag: { max: Math.max(0, ...lags), mean: lags.length ? lags.reduce((a, b) => a + b, 0) / lags.length : 0, samples: lags.length, after: Math.max(0, ...after.peers.map((p) => p.lag ?? 0)) },
          });
        }
      } finally {
        for (const n of nodes) await n.stop();
      }
    }
    const takeoverCount = ctx.full ? 100_000 : 20_000;
    const tk = await measureTakeover(ctx.dir, takeoverCount);
    const f = (n: number, d = 0) => n.toFixed(d);
    const table: string[][] = [['ack', 'connections', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'peer lag max (entries)', 'peer lag mean']];
    for (const r of runs) {
      const e = r.wrk.errors;
      table.push([r.ack, `${r.connections}`, f(r.rps), f(r.wrk.latency_us.p50 / 1000, 2), f(r.wrk.latency_us.p99 / 1000, 2), `${e.connect + e.read + e.write + e.timeout + e.status}`, r.ack === 'local' ? f(r.lag.max) : '-', r.ack === 'local' ? f(r.lag.mean, 1) : '-']);
    }
    const goals: Goal[] = CONNECTIONS.map((c) => {
      const local = runs.find((r) => r.ack === 'local' && r.connections === c)!;
      const quorum = runs.find((r) => r.ack === 'quorum' && r.connections === c)!;
      const ratio = quorum.rps / local.rps;
      return {
        name: `quorum / local req/s at ${c} connections`,
        target: `>= ${GOAL_RATIO}`,
        measured: `${ratio.toFixed(2)} (${f(quorum.rps)} / ${f(local.rps)} req/s)`,
        met: ratio >= GOAL_RATIO,
        note:
          ratio >= GOAL_RATIO
            ? undefined
            : 'three crowd processes, each with its own LMDB writer thread and fdatasync, and wrk share 2 cores; a quorum ack adds the follower\'s receive, commit and fdatasync and its report to every batch',
      };
    });
    const fc = (n: number | null) => (n === null ? '-' : n.toFixed(1));
    const takeoverTable = [
      ['drain', 'requests', 'first delivery', 'first to last s', 'msg/s', 'x local', 'CPU µs/msg'],
      ['local (1 node, its own log)', `${tk.local.received}`, `${tk.local.first_delivery_ms} ms after the upstream started`, f(tk.local.drain_ms / 1000, 2), f(tk.local.msg_per_s), '1.00', fc(tk.local.cpu_us_per_msg)],
      [`takeover (node ${tk.takeover.taker}, a's replica)`, `${tk.takeover.received}`, `${tk.takeover.first_delivery_ms} ms after kill -9`, f(tk.takeover.drain_ms / 1000, 2), f(tk.takeover.msg_per_s), f(tk.ratio, 2), fc(tk.takeover.cpu_us_per_msg)],
    ];
    goals.push({
      name: "takeover: the taker's drain rate of a killed node's backlog vs a local drain",
      target: `>= ${TAKEOVER_GOAL} x`,
      measured: `${tk.ratio.toFixed(2)} x (${f(tk.takeover.msg_per_s)} / ${f(tk.local.msg_per_s)} msg/s); first delivery ${tk.takeover.first_delivery_ms} ms after kill -9 (takeover_after ${TAKEOVER_AFTER_MS / 1000} s); CPU per request local / taker ${tk.cpu_ratio === null ? '-' : tk.cpu_ratio.toFixed(2)}`,
      met: tk.ratio >= TAKEOVER_GOAL,
      note:
        tk.ratio >= TAKEOVER_GOAL
          ? undefined
          : tk.cpu_ratio !== null && tk.cpu_ratio >= 0.9
            ? `the taker spent about the CPU per request the local drain did (local / taker ${tk.cpu_ratio.toFixed(2)}): the gap in rate is other work on the shared cores during one of the two drains of a few seconds each; rerun`
            : `the taker spent more CPU per request than the local drain (local / taker ${tk.cpu_ratio === null ? '-' : tk.cpu_ratio.toFixed(2)}): it reads the backlog from its replica of the killed node's log, with the surviving peer beside it on the same cores`,
    });
    return {
      scenario: 'replication',
      title: 'Replication: quorum acks against local acks, and the takeover of a killed node\'s backlog (3 nodes on loopback)',
      method: `Three crowd nodes on loopback (each replicating the two others), wrk (2 threads, ${CONNECTIONS.join(' and ')} keep-alive connections, ${seconds} s after a ${warmup} s warm-up) against node a only, first with cluster.ack = "local", then fresh nodes with "quorum" and min_insync = 2; the peers' lag behind node a is sampled from its /status every 100 ms during the run. Takeover: ${takeoverCount} requests loaded (undici, ${LOAD_CONNECTIONS} connections) into node a of three fresh nodes (quorum acks, min_insync 2, cluster.takeover_after = "${TAKEOVER_AFTER_MS / 1000}s", short for the bench: the default is 15 s) whose target delivers at ${SLOW_RATE} request/s on a, at full speed on its peers (concurrency ${DRAIN_CONCURRENCY}, a uWS no-op upstream); once both peers hold all of it, a gets SIGKILL: the time from the kill to the upstream's first request from the taker, and the taker's rate (requests / upstream's first to last answer) against a single fresh node draining the same ${takeoverCount} requests of its own log to the same upstream, earlier in the same run.`,
      params: { connections: CONNECTIONS, seconds, warmup_seconds: warmup, body: BODY, min_insync: 2, takeover: { count: takeoverCount, takeover_after_ms: TAKEOVER_AFTER_MS, slow_rate: SLOW_RATE, concurrency: DRAIN_CONCURRENCY, load_connections: LOAD_CONNECTIONS, retry: { base: '50ms', max: '500ms' } } },
      table,
      tables: [{ title: `Takeover: a ${takeoverCount}-request backlog drained after kill -9 of its node, against a local drain`, table: takeoverTable }],
      goals,
      charts: [
        { title: 'Ack rate: local vs quorum', unit: 'req/s', series: (['local', 'quorum'] as const).map((a) => ({ name: a, points: runs.filter((r) => r.ack === a).map((r) => ({ x: `${r.connections} conns`, y: Math.round(r.rps) })) })) },
        { title: 'p99 ack latency: local vs quorum', unit: 'ms', series: (['local', 'quorum'] as const).map((a) => ({ name: a, points: runs.filter((r) => r.ack === a).map((r) => ({ x: `${r.connections} conns`, y: Number((r.wrk.latency_us.p99 / 1000).toFixed(2)) })) })) },
        {
          title: 'Backlog drain: local vs takeover after kill -9',
          unit: 'msg/s',
          series: [
            { name: 'local (own log)', points: [{ x: `${takeoverCount} requests`, y: Math.round(tk.local.msg_per_s) }] },
            { name: `takeover (node ${tk.takeover.taker})`, points: [{ x: `${takeoverCount} requests`, y: Math.round(tk.takeover.msg_per_s) }] },
          ],
        },
      ],
      data: { runs, takeover: tk },
    };
  },
};
