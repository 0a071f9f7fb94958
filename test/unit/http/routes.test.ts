// Ensures exact paths win over prefixes, the longest prefix wins, and "/x/*" covers "/x".
import t from 'tap';
import { Router, overlapsReserved } from '../../../src/http/routes';
import type { RouteConfig } from '../../../src/config/schema';

const r = (name: string, path: string): RouteConfig => ({ name, path, methods: ['POST'], targets: [] });

t.test('matching', async (t) => {
  const router = new Router([r('leads', '/leads'), r('events', '/events/*'), r('deep', '/events/web/*'), r('exact-in-prefix', '/events/special')]);
  const name = (p: string) => router.match(p)?.name ?? null;
  t.equal(name('/leads'), 'leads');
  t.equal(name('/leads/'), null, 'exact paths do not match below them');
  t.equal(name('/leadsx'), null);
  t.equal(name('/events'), 'events');
  t.equal(name('/events/'), 'events');
  t.equal(name('/events/a/b'), 'events');
  t.equal(name('/eventsx'), null, 'a prefix matches whole segments only');
  t.equal(name('/events/web'), 'deep', 'the longest prefix wins');
  t.equal(name('/events/web/click'), 'deep');
  t.equal(name('/events/special'), 'exact-in-prefix', 'an exact path beats a prefix');
  t.equal(name('/'), null);
});

t.test('catch-all', async (t) => {
  const router = new Router([r('all', '/*'), r('leads', '/leads')]);
  t.equal(router.match('/anything/at/all')?.name, 'all');
  t.equal(router.match('/leads')?.name, 'leads');
  t.equal(router.match('/')?.name, 'all');
});

t.test('reserved paths', async (t) => {
  t.ok(overlapsReserved('/*', '/healthz'));
  t.ok(overlapsReserved('/_crowd/*', '/_crowd'));
  t.ok(overlapsReserved('/_crowd/replicate', '/_crowd'));
  t.ok(overlapsReserved('/healthz', '/healthz'));
  t.notOk(overlapsReserved('/leads/*', '/healthz'));
  t.notOk(overlapsReserved('/healthzx', '/healthz'));
});
