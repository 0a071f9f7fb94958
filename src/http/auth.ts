import { timingSafeEqual } from 'node:crypto';

/** True when `header` is "Bearer <token>" with exactly `token` (compared in constant time). */
export function bearerMatches(header: string, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) return false;
  const given = Buffer.from(m[1]!);
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}
