// Ensures the accept guard closes the listen socket at its high mark, keeps it closed until
// the count falls to its low mark (no flapping in between), treats a count that fails with
// EMFILE as "at the limit", keeps its reserve within half the limit, and stops for good.
import t from 'tap';
import pino from 'pino';
import { AcceptGuard } from '../../../src/http/accept-guard';

function guard(limit: number, reserve: number, counts: number[], resumeOk: () => boolean = () => true) {
  const events: string[] = [];
  const lines: string[] = [];
  let i = 0;
  const g = new AcceptGuard({
    limit,
    reserve,
    logger: pino({ level: 'info' }, { write: (l: string) => lines.push(l) }),
    pause: () => events.push('pause'),
    resume: () => {
      const ok = resumeOk();
      events.push(ok ? 'resume' : 'resume-failed');
      return ok;
    },
    count: () => counts[Math.min(i++, counts.length - 1)]!,
  });
  return { g, events, lines };
}

t.test('pauses at the high mark, resumes at the low mark only', async (t) => {
  const { g, events, lines } = guard(1024, 64, [10, 959, 960, 1000, 961, 897, 896, 900, 960]);
  t.equal(g.high, 960);
  t.equal(g.low, 896);
  for (let k = 0; k < 9; k++) g.check();
  g.stop();
  t.same(events, ['pause', 'resume', 'pause'], 'one pause at 960, no resume above 896, one at 896, pause again at 960');
  t.ok(lines.some((l) => l.includes('"event":"accept_paused"')), 'the pause is logged');
  t.ok(lines.some((l) => l.includes('"event":"accept_resumed"')), 'and the resume');
});

t.test('EMFILE while counting counts as the limit; a failed listen is tried again', async (t) => {
  let tries = 0;
  const { g, events } = guard(1024, 64, [Infinity, 10, 10, 10], () => ++tries > 1);
  for (let k = 0; k < 3; k++) g.check();
  g.stop();
  t.same(events, ['pause', 'resume-failed', 'resume']);
  t.equal(g.isPaused(), false);
});

t.test('the reserve never takes more than half the limit; stop() ends the checks', async (t) => {
  const { g, events } = guard(100, 1000, [49, 50, 0]);
  t.equal(g.high, 50);
  t.equal(g.low, 0);
  g.check();
  g.check();
  t.same(events, ['pause']);
  g.stop();
  g.check();
  t.same(events, ['pause'], 'nothing after stop');
});
