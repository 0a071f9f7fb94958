import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { envelopeToJson } from '../log/codec';
import { Log } from '../log/log';

/** Entries read per batch; bounds memory whatever the size of the log. */
const TAIL_BATCH = 1000;
const FOLLOW_POLL_MS = 200;

export async function tailCommand({ config }: LoadedConfig, o: { from?: number; n?: number; follow?: boolean }): Promise<void> {
  if (!existsSync(join(config.log.dir, 'crowd.mdb'))) {
    throw new CrowdError('CROWD_ERR_LOG_CLOSED', `no log at ${config.log.dir} (log.dir); nothing was stored there yet`);
  }
  const log = await Log.open({ dir: config.log.dir, maxPendingWrites: 1, maxBytes: config.log.max_bytes, retentionMs: config.log.retention, consumers: [], readOnly: true });
  const stats = log.stats();
  let next = o.from ?? (o.n !== undefined ? Math.max(stats.first_offset, stats.last_offset - o.n + 1) : stats.first_offset);
  let left = o.n ?? Infinity;
  let stopped = false;
  process.on('SIGINT', () => (stopped = true));
  process.on('SIGTERM', () => (stopped = true));
  process.stdout.on('error', () => (stopped = true)); // e.g. `crowd tail | head`
  for (;;) {
    log.refreshVisible();
    while (left > 0 && !stopped) {
      const batch = log.read(next, Math.min(TAIL_BATCH, left));
      if (batch.length === 0) break;
      let out = '';
      for (const e of batch) out += JSON.stringify(envelopeToJson(e)) + '\n';
      if (!process.stdout.write(out)) await new Promise((r) => process.stdout.once('drain', r));
      next = batch[batch.length - 1]!.offset + 1;
      left -= batch.length;
    }
    if (!o.follow || left <= 0 || stopped) break;
    await new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
  }
  await log.close();
}
