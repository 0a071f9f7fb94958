/**
 * replication: three crowd nodes on loopback, the same wrk load against one of them, once
 * with cluster.ack = "local" and once with "quorum" (min_insync 2), fresh nodes each time.
 * Reports req/s, p50/p99, the ratio quorum/local and, under local acks, how far the peers
 * lag behind the leader (sampled from its /status during the run).
 */
import { join } from 'node:path';
import { freePort, progress } from '../lib/proc';
import { adminJson, BODY, CONTENT_TYPE, PATH, startCrowd } from '../lib/servers';
import type { Scenario, ScenarioResult } from '../lib/types';
import { okRate, requireWrk, runWrk, writeWrkScript, type WrkResult } from '../lib/wrk';

const CONNECTIONS = [16, 256] as const;
const GOAL_RATIO = 0.5;
const SECRET = 'bench-cluster-secret-0123456789';

interface PeerJson {
  url: string;
  state: string;
  lag: number | null;
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
  describe: '3 nodes on loopback: wrk against one node with cluster.ack = "local" and "quorum"; req/s, p50/p99, quorum/local, replication lag',
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
    const f = (n: number, d = 0) => n.toFixed(d);
    const table: string[][] = [['ack', 'connections', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'peer lag max (entries)', 'peer lag mean']];
    for (const r of runs) {
      const e = r.wrk.errors;
      table.push([r.ack, `${r.connections}`, f(r.rps), f(r.wrk.latency_us.p50 / 1000, 2), f(r.wrk.latency_us.p99 / 1000, 2), `${e.connect + e.read + e.write + e.timeout + e.status}`, r.ack === 'local' ? f(r.lag.max) : '-', r.ack === 'local' ? f(r.lag.mean, 1) : '-']);
    }
    const goals = CONNECTIONS.map((c) => {
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
    return {
      scenario: 'replication',
      title: 'Replication: quorum acks against local acks (3 nodes on loopback)',
      method: `Three crowd nodes on loopback (each replicating the two others), wrk (2 threads, ${CONNECTIONS.join(' and ')} keep-alive connections, ${seconds} s after a ${warmup} s warm-up) against node a only, first with cluster.ack = "local", then fresh nodes with "quorum" and min_insync = 2; the peers' lag behind node a is sampled from its /status every 100 ms during the run.`,
      params: { connections: CONNECTIONS, seconds, warmup_seconds: warmup, body: BODY, min_insync: 2 },
      table,
      goals,
      charts: [
        { title: 'Ack rate: local vs quorum', unit: 'req/s', series: (['local', 'quorum'] as const).map((a) => ({ name: a, points: runs.filter((r) => r.ack === a).map((r) => ({ x: `${r.connections} conns`, y: Math.round(r.rps) })) })) },
        { title: 'p99 ack latency: local vs quorum', unit: 'ms', series: (['local', 'quorum'] as const).map((a) => ({ name: a, points: runs.filter((r) => r.ack === a).map((r) => ({ x: `${r.connections} conns`, y: Number((r.wrk.latency_us.p99 / 1000).toFixed(2)) })) })) },
      ],
      data: { runs },
    };
  },
};
