/**
 * Durations ("250ms", "10s", "1h30m", "7d") and sizes ("512MiB", "8GiB", "10MB", 1048576).
 * Each parser returns a number in the unit its name says, or a string saying what is wrong.
 */

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const SIZE_UNITS_BYTES: Record<string, number> = {
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

export type Parsed = { ok: true; value: number } | { ok: false; problem: string };

export function parseDurationMs(input: unknown): Parsed {
  if (typeof input !== 'string') {
    return { ok: false, problem: `expected a duration string such as "250ms", "10s" or "24h", got ${describe(input)}` };
  }
  const text = input.trim();
  const part = /(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = part.exec(text)) !== null) {
    total += Number(m[1]) * DURATION_UNITS_MS[m[2]!]!;
    matched = part.lastIndex;
  }
  if (text.length === 0 || matched !== text.length) {
    return { ok: false, problem: `"${input}" is not a duration (use a number with ms, s, m, h or d, e.g. "10s")` };
  }
  return { ok: true, value: Math.round(total) };
}

export function parseSizeBytes(input: unknown): Parsed {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) {
      return { ok: false, problem: `expected a whole number of bytes, got ${input}` };
    }
    return { ok: true, value: input };
  }
  if (typeof input !== 'string') {
    return { ok: false, problem: `expected a size such as "512MiB" or a number of bytes, got ${describe(input)}` };
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(input);
  const unit = m ? (m[2] || 'b').toLowerCase() : '';
  const factor = SIZE_UNITS_BYTES[unit];
  if (!m || factor === undefined) {
    return { ok: false, problem: `"${input}" is not a size (use B, KB, MB, GB, KiB, MiB, GiB or TiB, e.g. "512MiB")` };
  }
  const value = Math.floor(Number(m[1]) * factor);
  if (!Number.isSafeInteger(value)) return { ok: false, problem: `"${input}" is too large` };
  return { ok: true, value };
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return `the date ${value.toISOString()}`;
  if (typeof value === 'object') return Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null ? 'a table' : `a ${value.constructor?.name ?? 'value'}`;
  if (typeof value === 'string') return `the string "${value}"`;
  return `${typeof value} ${String(value)}`;
}

/** A size for people: "256 KiB", "1 MiB", "1.5 GiB", "512 B". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}
