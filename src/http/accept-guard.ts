/**
 * Keeps the ingest server off the file-descriptor limit. Each client connection takes a
 * descriptor; at the limit uSockets (this uWebSockets.js build) retries accept4, which fails
 * with EMFILE, in a busy loop that takes a whole core. It has no way to pause accepting, so
 * the guard closes the listen socket when the descriptors in use come near the limit (new
 * connections are then refused by the kernel, which a load balancer or client retries
 * elsewhere; open connections are served as before) and listens again once enough are free.
 *
 * Counting: the entries of /proc/self/fd, checked more often the nearer the count is to the
 * limit (a large limit far away costs a look every few seconds). At the limit the count
 * itself fails with EMFILE, which counts as "at the limit".
 */
import { readdirSync } from 'node:fs';
import type { Logger } from '../observability/logger';

/** Checks never come closer together than this, nor further apart than MAX. */
export const GUARD_MIN_MS = 50;
export const GUARD_MAX_MS = 2000;
/** New connections per millisecond assumed when spacing the checks. */
const ACCEPT_RATE_PER_MS = 20;

export interface AcceptGuardDeps {
  /** The soft limit on open files (RLIMIT_NOFILE). */
  readonly limit: number;
  /** Descriptors kept free for the log, upstream connections and the admin server. */
  readonly reserve: number;
  readonly logger: Logger;
  /** Closes the listen socket. */
  pause(): void;
  /** Listens again; false when that failed (tried again at the next check). */
  resume(): boolean;
  /** Descriptors in use (default: /proc/self/fd). */
  readonly count?: () => number;
}

/** Descriptors this process has open, or Infinity when it cannot even open a directory (EMFILE). */
export function openDescriptors(): number {
  try {
    return readdirSync('/proc/self/fd').length - 1; // less the one that read the directory
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'EMFILE' || code === 'ENFILE' ? Infinity : 0;
  }
}

export class AcceptGuard {
  /** Above this the listen socket closes; at or below `low` it opens again. */
  readonly high: number;
  readonly low: number;
  private paused = false;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly count: () => number;

  constructor(private readonly d: AcceptGuardDeps) {
    const reserve = Math.min(Math.floor(d.limit / 2), d.reserve);
    this.high = d.limit - reserve;
    this.low = d.limit - 2 * reserve;
    this.count = d.count ?? openDescriptors;
  }

  start(): void {
    this.check();
  }

  isPaused(): boolean {
    return this.paused;
  }

  /** One look at the count: pause or resume, then the next look. */
  check(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    const started = performance.now();
    const n = this.count();
    // Counting costs about 1.5 µs per descriptor on the event loop: with many connections the
    // checks are spaced so that they never take more than a twentieth of the time.
    const cost = performance.now() - started;
    if (!this.paused && n >= this.high) {
      this.paused = true;
      this.d.pause();
      this.d.logger.warn(
        { event: 'accept_paused', open_files: Number.isFinite(n) ? n : 'at the limit', limit: this.d.limit, resume_at: this.low },
        `${Number.isFinite(n) ? n : 'all'} of ${this.d.limit} file descriptors in use: not accepting new connections until ${this.low} or fewer are (open connections are served); raise the limit (LimitNOFILE=)`,
      );
    } else if (this.paused && n <= this.low) {
      if (this.d.resume()) {
        this.paused = false;
        this.d.logger.info({ event: 'accept_resumed', open_files: n, limit: this.d.limit }, `${n} of ${this.d.limit} file descriptors in use: accepting new connections again`);
      }
    }
    const room = Number.isFinite(n) ? this.high - n : 0;
    const wait = Math.max(20 * cost, this.paused ? GUARD_MIN_MS * 2 : Math.min(GUARD_MAX_MS, Math.max(GUARD_MIN_MS, room / ACCEPT_RATE_PER_MS)));
    this.timer = setTimeout(() => this.check(), wait);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
