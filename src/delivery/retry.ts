/**
 * The retry policy, as pure functions: what an attempt's result means, how long to wait
 * before the next one, and what an upstream's Retry-After asks for.
 */

/**
 * - `delivered`: 2xx.
 * - `retry`: no response (connection error, timeout), 408, 425, 429, 5xx, and any other
 *   status not listed as permanent.
 * - `dead`: a status in the target's `retry.permanent` list (400, 404, 405, 410, 413, 415,
 *   422 by default): the request itself is refused, so retrying cannot help.
 * - `pause`: 401 or 403: the credentials are wrong for every request; a 3xx (not listed in
 *   `retry.permanent`): the target URL is wrong (crowd does not follow redirects, which would
 *   turn a POST into a GET or send the request somewhere nobody configured). Either way the
 *   target stops instead of retrying or dead-lettering everything.
 */
export type Verdict = 'delivered' | 'retry' | 'dead' | 'pause';

/** `status` is null when the attempt got no response. */
export function classify(status: number | null, permanent: ReadonlySet<number>): Verdict {
  if (status === null) return 'retry';
  if (status >= 200 && status < 300) return 'delivered';
  if (status === 401 || status === 403) return 'pause';
  if (permanent.has(status)) return 'dead';
  if (status >= 300 && status < 400) return 'pause';
  return 'retry';
}

/** What an operator should fix when a target is paused after answering `status`. */
export function pauseHint(status: number | null): string {
  if (status !== null && status >= 300 && status < 400) return 'a redirect: set the target url to where it points';
  return 'check its credentials';
}

/**
 * Full-jitter exponential backoff: a uniform wait in [0, min(max, base * 2^(attempt-1))].
 * `attempt` counts the attempts made so far (1 after the first failure).
 */
export function backoffMs(attempt: number, base: number, max: number, random: () => number = Math.random): number {
  const ceiling = Math.min(max, base * 2 ** Math.min(Math.max(attempt - 1, 0), 52));
  return Math.floor(random() * ceiling);
}

/**
 * A Retry-After value in milliseconds from `now`: delta-seconds or an HTTP date. null when
 * absent or unreadable; a date in the past is 0.
 */
export function parseRetryAfter(value: string | string[] | undefined | null, now: number): number | null {
  if (Array.isArray(value)) value = value[0];
  if (value === undefined || value === null) return null;
  const v = value.trim();
  if (v === '') return null;
  if (/^\d+$/.test(v)) return Math.min(Number(v), 10 ** 9) * 1000;
  // An HTTP date has a day or month name; Date.parse alone would take "-3" as a year.
  if (!/[a-z]/i.test(v)) return null;
  const date = Date.parse(v);
  if (Number.isNaN(date)) return null;
  return Math.max(0, date - now);
}

/**
 * The wait before the next attempt after a retryable failure: the upstream's Retry-After
 * when it sent one (at least `base`, so that "Retry-After: 0" cannot make a busy loop, and
 * at most `max`), else the jittered backoff.
 */
export function retryDelayMs(attempt: number, retryAfterMs: number | null, base: number, max: number, random: () => number = Math.random): number {
  if (retryAfterMs !== null) return Math.min(Math.max(retryAfterMs, base), max);
  return backoffMs(attempt, base, max, random);
}
