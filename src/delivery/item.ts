import type { Envelope } from '../log/codec';

export type ItemState = 'pending' | 'inflight' | 'waiting' | 'done' | 'dead';

/** One request of a target, in memory while the main line or the retry line holds it. */
export interface Item {
  readonly offset: number;
  /** Held only while pending or in flight; read again from the log or the retry record when needed. */
  env: Envelope | null;
  /** Bytes counted against the read-ahead bounds while `env` is held. */
  bytes: number;
  received_at: number;
  /** When a dead letter was replayed (0: never); retry.max_age counts from the later of the two. */
  replayedAt: number;
  attempts: number;
  due: number;
  status: number;
  error: string;
  firstAttemptAt: number;
  state: ItemState;
  /** Still in the window (the offset has not passed it). */
  inWindow: boolean;
  /** A retry record exists (or is being written). */
  parked: boolean;
  /** Its metadata (received_at, attempts, ...) was loaded from the retry record. */
  loaded: boolean;
  gen: number;
  /** The key it is queued under in the retry line's expiry order (0: not queued). */
  expiryKey: number;
}

export function newItem(offset: number, env: Envelope | null, receivedAt: number, gen: number): Item {
  return { offset, env, bytes: 0, received_at: receivedAt, replayedAt: 0, attempts: 0, due: 0, status: 0, error: '', firstAttemptAt: 0, state: 'pending', inWindow: true, parked: false, loaded: env !== null, gen, expiryKey: 0 };
}

/** What an envelope costs in memory, roughly: its body plus headers and bookkeeping. */
export function envelopeBytes(e: Envelope): number {
  let n = 256 + e.body.byteLength + e.path.length + e.query.length;
  for (const [k, v] of e.headers) n += k.length + v.length + 16;
  return n;
}
