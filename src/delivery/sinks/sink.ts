import type { Envelope } from '../../log/codec';

/** The result of one delivery attempt. */
export interface AttemptResult {
  /** The upstream's status, or null when there was no response (connection error, timeout). */
  readonly status: number | null;
  /** The upstream's Retry-After header, if any. */
  readonly retryAfter: string | null;
  /** What went wrong, for logs and the dead-letter record; empty on success. */
  readonly error: string;
  /** True when the attempt ran out of `timeout`. */
  readonly timedOut: boolean;
  /** True when the request cannot be sent at all (the client refused to build it): dead-letter it. */
  readonly unsendable: boolean;
}

/** Where a target's requests go. One per target; it limits nothing itself (the consumer does). */
export interface Sink {
  send(e: Envelope, attempt: number): Promise<AttemptResult>;
  close(): Promise<void>;
}
