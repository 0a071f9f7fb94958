/**
 * A bounded load client: `workers` keep-alive loops POSTing unique bodies until stopped or
 * `maxRequests` is reached. It records the id of every 2xx (the promise crowd must keep)
 * and counts everything else. Connection errors (crowd restarting) are retried later.
 */
import http from 'node:http';
import { request } from './http';

export interface Ack {
  id: string;
  body: string;
}

export class LoadClient {
  readonly acks: Ack[] = [];
  refused = 0;
  errors = 0;
  other = 0;
  private stopped = false;
  private seq = 0;
  private loops: Promise<void>[] = [];
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  constructor(
    private readonly url: () => string,
    private readonly opts: { workers: number; maxRequests: number; tag: string; timeoutMs?: number; body?: (seq: number) => string },
  ) {}

  start(): this {
    for (let w = 0; w < this.opts.workers; w++) this.loops.push(this.loop());
    return this;
  }

  private async loop(): Promise<void> {
    while (!this.stopped && this.seq < this.opts.maxRequests) {
      const seq = this.seq++;
      const body = this.opts.body ? this.opts.body(seq) : JSON.stringify({ tag: this.opts.tag, seq, pad: 'x'.repeat((seq + 1) % 97) });
      try {
        const r = await request(this.url(), { body, agent: this.agent, timeoutMs: this.opts.timeoutMs ?? 10_000, headers: { 'content-type': 'application/json' } });
        if (r.status >= 200 && r.status < 300) this.acks.push({ id: JSON.parse(r.body).id, body });
        else if (r.status === 503) this.refused++;
        else this.other++;
      } catch {
        this.errors++;
        await new Promise((res) => setTimeout(res, 20));
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
    this.agent.destroy();
  }
}
