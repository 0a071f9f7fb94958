// Ensures durations and sizes parse to milliseconds and bytes, and bad ones are refused.
import t from 'tap';
import { parseDurationMs, parseSizeBytes } from '../../../src/config/units';
import { formatDuration } from '../../../src/config/load';

t.test('durations', async (t) => {
  const ok: [string, number][] = [['250ms', 250], ['10s', 10_000], ['5m', 300_000], ['24h', 86_400_000], ['7d', 604_800_000], ['1h30m', 5_400_000], ['1.5s', 1500]];
  for (const [s, ms] of ok) t.same(parseDurationMs(s), { ok: true, value: ms }, s);
  for (const bad of ['', '10', '10 sec', 'h', '-1s', 10, null, '1s garbage']) t.equal(parseDurationMs(bad).ok, false, JSON.stringify(bad));
  for (const ms of [1, 999, 1000, 90_000, 86_400_000]) t.equal(parseDurationMs(formatDuration(ms)).ok && (parseDurationMs(formatDuration(ms)) as { value: number }).value, ms, `format/parse ${ms}`);
});

t.test('sizes', async (t) => {
  const ok: [string | number, number][] = [[1048576, 1048576], ['512MiB', 512 * 1024 ** 2], ['8GiB', 8 * 1024 ** 3], ['10MB', 10_000_000], ['1KiB', 1024], ['100', 100], ['100B', 100]];
  for (const [s, b] of ok) t.same(parseSizeBytes(s), { ok: true, value: b }, String(s));
  for (const bad of ['', 'lots', '5 parsecs', -1, 1.5, 'GiB', {}, true]) t.equal(parseSizeBytes(bad).ok, false, JSON.stringify(bad));
});
