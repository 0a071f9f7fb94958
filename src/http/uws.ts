/**
 * Loads the native uWebSockets.js binary directly. The npm build crowd depends on silently
 * falls back to a slow pure-JS server when its binary does not load; crowd refuses that.
 */
import { dirname, join } from 'node:path';
import { CrowdError } from '../errors';
import type * as UWS from 'uWebSockets.js';

export type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket } from 'uWebSockets.js';
export type Uws = typeof UWS;

let loaded: Uws | null = null;

export function loadNativeUws(): Uws {
  if (loaded) return loaded;
  const pkgDir = dirname(require.resolve('uWebSockets.js/package.json'));
  const binary = join(pkgDir, 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
  try {
    loaded = require(binary) as Uws;
  } catch (err) {
    throw new CrowdError(
      'CROWD_ERR_UWS_NATIVE',
      `the native uWebSockets.js binary ${binary} did not load (${(err as Error).message}); crowd does not run on the slow pure-JS fallback`,
      { cause: err },
    );
  }
  if (typeof loaded.App !== 'function' || typeof loaded.us_listen_socket_close !== 'function' || typeof (loaded as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT?: unknown }).LIBUS_LISTEN_EXCLUSIVE_PORT !== 'number') {
    loaded = null;
    throw new CrowdError('CROWD_ERR_UWS_NATIVE', `${binary} is not a uWebSockets.js binary`);
  }
  return loaded;
}

/**
 * Listens and resolves with the listen socket and the bound port (port 0 picks one).
 * The port is exclusive: uSockets would otherwise set SO_REUSEPORT, and a second crowd on
 * the same port would silently take half of the connections.
 */
export async function listen(uws: Uws, app: UWS.TemplatedApp, host: string, port: number): Promise<{ socket: UWS.us_listen_socket; port: number }> {
  const socket = listenNow(uws, app, host, port);
  if (!socket) throw new CrowdError('CROWD_ERR_LISTEN', `cannot listen on ${host}:${port} (address in use or not available)`);
  return { socket, port: uws.us_socket_local_port(socket) };
}

/** Listens on an exclusive port (see listen); uWS calls back before returning. False when it failed. */
export function listenNow(uws: Uws, app: UWS.TemplatedApp, host: string, port: number): UWS.us_listen_socket | false {
  let socket: UWS.us_listen_socket | false = false;
  const listenExclusive = app.listen as unknown as (host: string, port: number, options: number, cb: (socket: UWS.us_listen_socket | false) => void) => void;
  listenExclusive.call(app, host, port, (uws as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT: number }).LIBUS_LISTEN_EXCLUSIVE_PORT, (s) => (socket = s));
  return socket;
}
