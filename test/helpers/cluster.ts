/**
 * A cluster of real `bin/crowd` nodes on loopback: ingest ports are chosen up front (each
 * node's cluster.peers names the others), admin ports by the kernel.
 */
import { createServer } from 'node:net';
import { Crowd, runCli, type CrowdOptions } from './crowd';
import { request } from './http';

export const SECRET = 'cluster-secret-for-tests-0123456789';

/** A free loopback port (bound and released; the caller binds it soon after). */
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

export interface ClusterOptions {
  nodes?: number;
  ack?: 'local' | 'quorum';
  minInsync?: number;
  ackTimeout?: string;
  /** Extra config merged into every node's (routes, targets...). */
  config?: Record<string, any>;
  /** Per-node overrides (by index); `config` is merged over the shared config. */
  perNode?: (i: number) => Partial<CrowdOptions> & { cluster?: Record<string, any> };
  /**
   * Builds node `i` from the options the cluster chose for it (default: `new Crowd(options)`),
   * e.g. `(i, o) => (i === 1 ? new PowerCutCrowd(o) : new Crowd(o))`.
   */
  make?: (i: number, options: CrowdOptions) => Crowd;
}

export class Cluster {
  readonly nodes: Crowd[] = [];
  readonly ports: number[] = [];
  readonly ids: string[] = [];

  static async create(o: ClusterOptions = {}): Promise<Cluster> {
    const c = new Cluster();
    const n = o.nodes ?? 3;
    for (let i = 0; i < n; i++) c.ports.push(await freePort());
    for (let i = 0; i < n; i++) {
      const id = String.fromCharCode(97 + i); // a, b, c
      c.ids.push(id);
      const over = o.perNode?.(i) ?? {};
      const peers = c.ports.filter((_, j) => j !== i).map((p) => `http://127.0.0.1:${p}`);
      const { cluster, config: own, ...options } = over;
      const nodeOptions: CrowdOptions = {
        ...options,
        config: {
          ...(o.config ?? {}),
          ...(own ?? {}),
          node_id: id,
          server: { ...(o.config?.server ?? {}), host: '127.0.0.1', port: c.ports[i] },
          cluster: { peers, secret: SECRET, ack: o.ack ?? 'quorum', ...(o.minInsync ? { min_insync: o.minInsync } : {}), ...(o.ackTimeout ? { ack_timeout: o.ackTimeout } : {}), ...(cluster ?? {}) },
        },
      };
      c.nodes.push(o.make ? o.make(i, nodeOptions) : new Crowd(nodeOptions));
    }
    return c;
  }

  async start(): Promise<this> {
    await Promise.all(this.nodes.map((n) => n.start()));
    return this;
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}

export async function status(node: Crowd): Promise<any> {
  const r = await request(node.adminUrl('/status'), { method: 'GET' });
  return JSON.parse(r.body);
}

/** The replica of `origin` held by `node`, as `crowd tail --replica` prints it (`env`: the CLI's environment). */
export async function tailReplica(node: Crowd, origin: string, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<any[]> {
  const r = await runCli(['tail', '--replica', origin, ...extra, '-c', node.configFile], env ? { env } : {});
  if (r.code !== 0) throw new Error(`crowd tail --replica ${origin} exited ${r.code}: ${r.stderr}`);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** Every peer of `node` connected and caught up (lag 0) with its log. */
export async function caughtUp(node: Crowd): Promise<boolean> {
  const s = await status(node);
  return s.peers.length > 0 && s.peers.every((p: any) => p.state === 'connected' && p.lag === 0);
}
