/**
 * `crowd dlq list|replay|purge` and `crowd replay`: operator actions on a running node,
 * through its admin API (the node owns the log; the CLI never writes it).
 */
import type { LoadedConfig } from '../config/load';
import { adminGet } from './status';

const target = (name: string) => `/targets/${encodeURIComponent(name)}`;

function offsetsQuery(offsets: number[] | undefined): string {
  return offsets && offsets.length > 0 ? `?offset=${offsets.join(',')}` : '';
}

export async function dlqList({ config }: LoadedConfig, o: { target: string; after?: number; limit?: number; json?: boolean; origin?: string; incarnation?: string }): Promise<void> {
  const q = new URLSearchParams();
  if (o.origin !== undefined) q.set('origin', o.origin);
  if (o.incarnation !== undefined) q.set('incarnation', o.incarnation);
  if (o.after !== undefined) q.set('after', String(o.after));
  q.set('limit', String(o.limit ?? 100));
  const r = (await adminGet(config, `${target(o.target)}/dlq?${q}`)) as { dead_letters: Record<string, unknown>[] };
  for (const d of r.dead_letters) process.stdout.write(JSON.stringify(d) + '\n');
  const of = o.origin !== undefined ? ` of ${o.origin}'s log` : '';
  if (r.dead_letters.length === 0) process.stderr.write(`target ${o.target}: no dead letters${of}${o.after ? ` after offset ${o.after}` : ''}\n`);
}

export async function dlqReplay({ config }: LoadedConfig, o: { target: string; offset?: number[] }): Promise<void> {
  const r = (await adminGet(config, `${target(o.target)}/dlq/replay${offsetsQuery(o.offset)}`, 'POST')) as { replayed: number; remaining: number };
  process.stdout.write(`target ${o.target}: ${r.replayed} dead letters go back to delivery; ${r.remaining} remain\n`);
}

export async function dlqPurge({ config }: LoadedConfig, o: { target: string; offset?: number[] }): Promise<void> {
  const r = (await adminGet(config, `${target(o.target)}/dlq/purge${offsetsQuery(o.offset)}`, 'POST')) as { purged: number; remaining: number };
  process.stdout.write(`target ${o.target}: ${r.purged} dead letters purged; ${r.remaining} remain\n`);
}

export async function replay({ config }: LoadedConfig, o: { target: string; from?: number; since?: string }): Promise<void> {
  const q = o.from !== undefined ? `from=${o.from}` : `since=${encodeURIComponent(o.since ?? '')}`;
  const r = (await adminGet(config, `${target(o.target)}/replay?${q}`, 'POST')) as { from: number; previous: number; message?: string };
  if (r.message) process.stdout.write(`${r.message}\n`);
  else process.stdout.write(`target ${o.target}: rewound to offset ${r.from} (was at ${r.previous})\n`);
}
