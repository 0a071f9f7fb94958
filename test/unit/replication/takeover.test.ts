// Handback arithmetic (the origin moves a target up to the highest finished offset reported
// for its log, never down, never past its durable offset) and the taken reports' parsing.
import t from 'tap';
import { parseLeaderMessage, TAKEN_MAX, type TakenReport } from '../../../src/replication/protocol';
import { reportedAhead } from '../../../src/replication/takeover';

const rep = (finished: Record<string, number>, delivering = false): TakenReport => ({ origin: 'a', incarnation: 'ab12', delivering, finished });

t.test('reportedAhead: the highest report above the local offset, capped at the durable offset', async (t) => {
  const local: Record<string, number | null> = { api: 10, crm: 50, fresh: null };
  const at = (x: string) => local[x] ?? null;
  const targets = ['api', 'crm', 'fresh'];
  t.same(reportedAhead([], at, targets, 100), {}, 'no reports: nothing moves');
  t.same(reportedAhead([rep({ api: 40 }), rep({ api: 70, crm: 20 })], at, targets, 100), { api: { from: 10, to: 70 } }, 'the highest of the reports; crm is ahead locally and stays');
  t.same(reportedAhead([rep({ api: 500 })], at, targets, 100), { api: { from: 10, to: 100 } }, 'never past what this log holds durably');
  t.same(reportedAhead([rep({ fresh: 30 })], at, targets, 100), {}, 'a target with no offset here (new) is left to start as new targets do');
  t.same(reportedAhead([rep({ other: 30 })], at, targets, 100), {}, 'a target not configured here is ignored');
});

t.test('progress: taken reports parse, and malformed ones are refused with a reason', async (t) => {
  const base = { t: 'progress', first: 1, durable: 5, finished: { api: 3 } };
  const taken = [rep({ api: 4 }, true)];
  t.same(parseLeaderMessage(JSON.stringify({ ...base, taken })), { ...base, taken });
  t.same(parseLeaderMessage(JSON.stringify(base)), base, 'taken is optional');
  const bad: [unknown, RegExp][] = [
    ['x', /not a list/],
    [Array.from({ length: TAKEN_MAX + 1 }, () => rep({})), /at most 256/],
    [[{ ...rep({}), origin: 'no spaces allowed' }], /without origin/],
    [[{ ...rep({}), incarnation: 'XYZ' }], /without origin, incarnation/],
    [[{ ...rep({}), delivering: 'yes' }], /delivering/],
    [[{ ...rep({}), finished: null }], /finished/],
    [[rep({ api: -1 })], /not an offset/],
    [[rep({ api: 2 ** 60 })], /not an offset/],
  ];
  for (const [v, why] of bad) t.match(parseLeaderMessage(JSON.stringify({ ...base, taken: v })), why, JSON.stringify(v).slice(0, 60));
});
