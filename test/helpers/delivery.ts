/** Shared steps of the delivery tests: send requests, read /status and the delivery metrics. */
import type { Test } from 'tap';
import type { Crowd } from './crowd';
import { request } from './http';

export interface TargetStatus {
  name: string;
  state: string;
  offset: number;
  committed_offset: number;
  lag: number;
  in_flight: number;
  retrying: number;
  dead_letters: number;
  accepted: number;
  delivered: number;
  last_error: { status: number | null; message: string } | null;
  next_attempt_at: string | null;
}

/** POSTs `count` requests to `path` (bodies `${prefix}${i}`), `parallel` at a time; returns the ids in order. */
export async function post(crowd: Crowd, count: number, opts: { path?: string; prefix?: string; parallel?: number; headers?: Record<string, string> } = {}): Promise<string[]> {
  const ids: string[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const r = await request(crowd.url(opts.path ?? '/leads'), { body: `${opts.prefix ?? 'req-'}${i}`, headers: { 'content-type': 'text/plain', ...opts.headers } });
      if (r.status !== 200) throw new Error(`POST ${i} got ${r.status}: ${r.body}`);
      ids[i] = JSON.parse(r.body).id;
    }
  };
  await Promise.all(Array.from({ length: opts.parallel ?? 8 }, worker));
  return ids;
}

export async function targetStatus(crowd: Crowd, name: string): Promise<TargetStatus> {
  const r = await request(crowd.adminUrl('/status'), { method: 'GET' });
  const s = JSON.parse(r.body) as { targets: TargetStatus[] };
  const t = s.targets.find((x) => x.name === name);
  if (!t) throw new Error(`no target ${name} in /status: ${r.body}`);
  return t;
}

export interface DeliveryFigures {
  accepted: number;
  delivered: number;
  dead: number;
  purged: number;
  lag: number;
}

/** The per-target delivery figures of one /metrics scrape. */
export async function scrape(crowd: Crowd, target: string): Promise<DeliveryFigures & { text: string }> {
  const text = (await request(crowd.adminUrl('/metrics'), { method: 'GET' })).body;
  const v = (name: string): number => {
    const m = new RegExp(`^${name}\\{target="${target}"\\} (\\S+)$`, 'm').exec(text);
    if (!m) throw new Error(`no ${name}{target="${target}"} in /metrics`);
    return Number(m[1]);
  };
  return { text, accepted: v('crowd_accepted_total'), delivered: v('crowd_delivered_total'), dead: v('crowd_dead_letters'), purged: v('crowd_dead_letters_purged_total'), lag: v('crowd_consumer_lag_messages') };
}

/** Asserts accepted = delivered + dead + purged + lag in one scrape; returns the figures. */
export async function checkIdentity(t: Test, crowd: Crowd, target: string): Promise<DeliveryFigures & { text: string }> {
  const f = await scrape(crowd, target);
  t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag, `${target}: accepted ${f.accepted} = delivered ${f.delivered} + dead ${f.dead} + purged ${f.purged} + lag ${f.lag}`);
  t.ok(f.lag >= 0, `${target}: lag ${f.lag} >= 0`);
  return f;
}
