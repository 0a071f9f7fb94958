import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { envelopeToJson, type Envelope } from '../log/codec';
import { Log } from '../log/log';

/** Entries read per batch; bounds memory whatever the size of the log. */
const TAIL_BATCH = 1000;
const FOLLOW_POLL_MS = 200;

export async function tailCommand({ config }: LoadedConfig, o: { from?: number; n?: number; follow?: boolean; replica?: string; incarnation?: string }): Promise<void> {
  if (!existsSync(join(config.log.dir, 'crowd.mdb'))) {
    throw new CrowdError('CROWD_ERR_LOG_CLOSED', `no log at ${config.log.dir} (log.dir); nothing was stored there yet`);
  }
  const log = await Log.open({ dir: config.log.dir, maxPendingWrites: 1, maxBytes: config.log.max_bytes, retentionMs: config.log.retention, consumers: [], readOnly: true });
  if (o.replica !== undefined) {
    try {
      await tailReplica(log, o.replica, o);
    } finally {
      await log.close();
    }
    return;
  }
  const stats = log.stats();
  let next = o.from ?? (o.n !== undefined ? Math.max(stats.first_offset, stats.last_offset - o.n + 1) : stats.first_offset);
  let left = o.n ?? Infinity;
  let stopped = false;
  process.on('SIGINT', () => (stopped = true));
  process.on('SIGTERM', () => (stopped = true));
  process.stdout.on('error', () => (stopped = true)); // e.g. `crowd tail | head`
  for (;;) {
    log.refreshVisible();
    ({ next, left } = await printEntries((from, limit) => log.read(from, limit), next, left, () => stopped));
    if (!o.follow || left <= 0 || stopped) break;
    await new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
  }
  await log.close();
}

/** `crowd tail --replica ORIGIN`: a peer's log as held here, printed like the local log. */
async function tailReplica(log: Log, origin: string, o: { from?: number; n?: number; incarnation?: string }): Promise<void> {
  const held = log.replicas().filter((r) => r.origin === origin);
  if (held.length === 0) {
    const origins = [...new Set(log.replicas().map((r) => r.origin))];
    throw new CrowdError('CROWD_ERR_REPLICA', `no replica of "${origin}" is held in ${log.dir} (${origins.length ? `replicas held: ${origins.join(', ')}` : 'no replica is held'})`);
  }
  const replica = o.incarnation !== undefined ? held.find((r) => r.incarnation === o.incarnation) : held[held.length - 1];
  if (!replica) throw new CrowdError('CROWD_ERR_REPLICA', `no replica of "${origin}" incarnation ${o.incarnation} is held (incarnations: ${held.map((r) => r.incarnation).join(', ')})`);
  const last = replica.flushed();
  const next = o.from ?? (o.n !== undefined ? Math.max(replica.firstOffset(), last - o.n + 1) : replica.firstOffset());
  await printEntries((from, limit) => replica.read(from, limit), next, o.n ?? Infinity, () => false);
}

/** Prints entries from `next` as JSON lines, a batch at a time, until `left` are printed, none remain or `stopped()`. */
async function printEntries(read: (from: number, limit: number) => Envelope[], next: number, left: number, stopped: () => boolean): Promise<{ next: number; left: number }> {
  while (left > 0 && !stopped()) {
    const batch = read(next, Math.min(TAIL_BATCH, left));
    if (batch.length === 0) break;
    let out = '';
    for (const e of batch) out += JSON.stringify(envelopeToJson(e)) + '\n';
    if (!process.stdout.write(out)) await new Promise((r) => process.stdout.once('drain', r));
    next = batch[batch.length - 1]!.offset + 1;
    left -= batch.length;
  }
  return { next, left };
}
