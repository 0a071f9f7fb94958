/**
 * Route matching: exact paths first, then prefixes ("/events/*" matches "/events" and
 * everything under "/events/"), longest prefix first, as nginx users expect.
 */
import type { RouteConfig } from '../config/schema';

export class Router {
  private readonly exact = new Map<string, RouteConfig>();
  private readonly prefixes: { base: string; route: RouteConfig }[] = [];

  constructor(routes: readonly RouteConfig[]) {
    for (const r of routes) {
      if (r.path.endsWith('/*')) this.prefixes.push({ base: r.path.slice(0, -2), route: r });
      else this.exact.set(r.path, r);
    }
    this.prefixes.sort((a, b) => b.base.length - a.base.length);
  }

  match(path: string): RouteConfig | null {
    const exact = this.exact.get(path);
    if (exact) return exact;
    for (const p of this.prefixes) {
      if (path === p.base || path.startsWith(p.base + '/') || (p.base === '' && path.startsWith('/'))) return p.route;
    }
    return null;
  }
}

/** True when a route's path would capture `reserved` or anything under it. */
export function overlapsReserved(routePath: string, reserved: string): boolean {
  const base = routePath.endsWith('/*') ? routePath.slice(0, -2) : routePath;
  if (base === reserved || base.startsWith(reserved + '/')) return true;
  const router = new Router([{ name: 'x', path: routePath, methods: ['POST'], targets: [] }]);
  return router.match(reserved) !== null || router.match(reserved + '/x') !== null;
}
