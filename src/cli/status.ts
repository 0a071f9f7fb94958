import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LoadedConfig } from '../config/load';
import { RUNTIME_FILE } from '../node';
import { CrowdError } from '../errors';

/**
 * The admin URL a local CLI should call: a wildcard listen address is reached on loopback;
 * port 0 (picked at start) is read from the node's runtime file in log.dir.
 */
export function adminBase(config: LoadedConfig['config']): string {
  let host = config.admin.host;
  let port = config.admin.port;
  if (port === 0) {
    const file = join(config.log.dir, RUNTIME_FILE);
    try {
      port = (JSON.parse(readFileSync(file, 'utf8')) as { admin_port: number }).admin_port;
    } catch (err) {
      throw new CrowdError('CROWD_ERR_ADMIN', `admin.port is 0 and ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? err}); is crowd running with this config?`);
    }
  }
  if (host === '0.0.0.0' || host === '') host = '127.0.0.1';
  if (host === '::') host = '::1';
  if (host.includes(':')) host = `[${host}]`;
  return `http://${host}:${port}`;
}

export async function adminGet(config: LoadedConfig['config'], path: string, method: 'GET' | 'POST' = 'GET'): Promise<unknown> {
  const url = adminBase(config) + path;
  const headers: Record<string, string> = {};
  if (config.admin.token) headers.authorization = `Bearer ${config.admin.token}`;
  let res: Response;
  try {
    res = await fetch(url, { method, headers, signal: AbortSignal.timeout(60_000) });
  } catch (err) {
    throw new CrowdError('CROWD_ERR_ADMIN', `cannot reach the admin API at ${url} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is crowd running with this config?`);
  }
  const body = await res.text();
  if (!res.ok) {
    let message = body;
    try {
      message = (JSON.parse(body) as { error?: string }).error ?? body;
    } catch {
      // not JSON: the raw body says it
    }
    throw new CrowdError('CROWD_ERR_ADMIN', `${method} ${url} answered ${res.status}: ${message}`);
  }
  return JSON.parse(body);
}

interface StatusJson {
  node: string;
  version: string;
  state: string;
  ready: boolean;
  ingest: { host: string; port: number | null };
  log: { dir: string; first_offset?: number; last_offset?: number; durable_offset?: number; bytes?: number; max_bytes?: number; pending_writes?: number; over_max_bytes?: boolean; held_by?: string[] };
  targets: { name: string; url: string; offset: number; lag: number; state: string; in_flight: number; retrying: number; dead_letters: number; delivered: number; last_error: { at: string; status: number | null; message: string } | null; next_attempt_at: string | null }[];
  incarnation?: string | null;
  cluster?: {
    ack: string;
    min_insync: number;
    quorum_waiting: number;
    replicas: {
      origin: string;
      incarnation: string;
      first_offset: number;
      last_offset: number;
      flushed_offset: number;
      bytes: number;
      gaps: number;
      finished: Record<string, number>;
      delivered_by?: string;
      orphaned?: boolean;
      targets?: { name: string; state: string; offset: number; lag: number; dead_letters: number }[];
    }[];
  };
  peers: { url: string; state: string; node_id: string | null; incarnation: string | null; flushed_offset: number | null; lag: number | null; last_heard: number | null; reason?: string }[];
}

const ago = (ms: number | null): string => (ms === null ? 'never' : `${Math.max(0, Math.round((Date.now() - ms) / 100) / 10)} s ago`);

export async function statusCommand({ config }: LoadedConfig, asJson: boolean): Promise<void> {
  const s = (await adminGet(config, '/status')) as StatusJson;
  if (asJson) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return;
  }
  const lines = [
    `node      ${s.node} (crowd ${s.version})`,
    `state     ${s.state}${s.ready ? '' : ' (not ready)'}`,
    `ingest    ${s.ingest.host}:${s.ingest.port}`,
    `log       ${s.log.dir}`,
    `  offsets first ${s.log.first_offset}  last ${s.log.last_offset}  durable ${s.log.durable_offset}`,
    `  bytes   ${s.log.bytes} of ${s.log.max_bytes}  pending writes ${s.log.pending_writes}${s.log.over_max_bytes ? `  FULL (503), held by ${s.log.held_by?.length ? s.log.held_by.join(', ') : 'no target'}` : ''}`,
    `targets   ${s.targets.length === 0 ? '(none)' : ''}`,
    ...s.targets.flatMap((t) => [
      `  ${t.name.padEnd(20)} ${t.state}${t.next_attempt_at ? ` (next attempt ${t.next_attempt_at})` : ''}  ${t.url}`,
      `    offset ${t.offset}  lag ${t.lag}  in flight ${t.in_flight}  retrying ${t.retrying}  dead letters ${t.dead_letters}  delivered ${t.delivered}`,
      ...(t.last_error ? [`    last error ${t.last_error.at}: ${t.last_error.message}`] : []),
    ]),
    ...(s.cluster ? [`cluster   incarnation ${s.incarnation}  ack ${s.cluster.ack}  min_insync ${s.cluster.min_insync}${s.cluster.quorum_waiting ? `  waiting for quorum ${s.cluster.quorum_waiting}` : ''}`] : []),
    `peers     ${s.peers.length === 0 ? '(none)' : ''}`,
    ...s.peers.flatMap((p) => [
      `  ${p.url}  ${p.state}${p.node_id ? `  ${p.node_id}/${p.incarnation}` : ''}  last heard ${ago(p.last_heard)}`,
      `    flushed here ${p.flushed_offset ?? '-'}  lag ${p.lag ?? '-'}${p.reason ? `  (${p.reason})` : ''}`,
    ]),
    `replicas  ${!s.cluster || s.cluster.replicas.length === 0 ? '(none)' : ''}`,
    ...(s.cluster?.replicas ?? []).flatMap((r) => [
      `  ${r.origin}/${r.incarnation}  offsets ${r.first_offset}..${r.flushed_offset}  bytes ${r.bytes}${r.gaps ? `  gaps ${r.gaps}` : ''}  finished ${Object.entries(r.finished).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}`,
      ...(r.delivered_by ? [`    delivered by ${r.delivered_by}${r.orphaned ? ' (an old log: its node started a new one)' : ''}`] : []),
      ...(r.targets ?? []).map((x) => `    ${x.name.padEnd(20)} ${x.state}  offset ${x.offset}  lag ${x.lag}  dead letters ${x.dead_letters}`),
    ]),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}
