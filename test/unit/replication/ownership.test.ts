// Rendezvous ownership of a down origin's log: deterministic, never the origin itself, spread
// over the live nodes, and stable: a node leaving moves only the origins it won.
import t from 'tap';
import { rendezvousScore, taker } from '../../../src/replication/ownership';

t.test('the same winner from any order of the same view; never the origin; null with nobody live', async (t) => {
  const live = ['a', 'b', 'c', 'd'];
  const w = taker('x', live);
  t.ok(w !== null && live.includes(w));
  t.equal(taker('x', [...live].reverse()), w, 'order does not matter');
  t.equal(taker('a', ['a']), null, 'the origin alone: nobody takes over');
  t.not(taker('a', ['a', 'b', 'c']), 'a', 'never the origin');
  t.equal(taker('a', []), null);
  t.equal(rendezvousScore('a', 'b'), rendezvousScore('a', 'b'), 'the score is a pure function');
  t.not(rendezvousScore('a', 'b'), rendezvousScore('b', 'a'), 'of the ordered pair');
});

t.test('spread: 3000 origins over 3 live nodes, each wins about a third', async (t) => {
  const wins = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const w = taker(`origin-${i}`, ['n1', 'n2', 'n3'])!;
    wins.set(w, (wins.get(w) ?? 0) + 1);
  }
  for (const n of ['n1', 'n2', 'n3']) t.ok((wins.get(n) ?? 0) > 850 && (wins.get(n) ?? 0) < 1150, `${n} wins ${wins.get(n)} of 3000`);
});

t.test('stability: removing a node moves only the origins it won', async (t) => {
  const all = ['n1', 'n2', 'n3', 'n4'];
  let moved = 0;
  let wrong = 0;
  for (let i = 0; i < 2000; i++) {
    const o = `o-${i}`;
    const before = taker(o, all)!;
    const after = taker(o, all.filter((n) => n !== 'n2'))!;
    if (before !== after) {
      moved++;
      if (before !== 'n2') wrong++;
    }
  }
  t.equal(wrong, 0, 'no origin won by another node changed hands');
  t.ok(moved > 350 && moved < 650, `${moved} of 2000 origins moved (those n2 had won)`);
});
