/**
 * The lmdb-js behaviours the log depends on, in one place (each has a test in
 * test/unit/log/lmdb.test.ts, so that an upgrade that changes one fails there first).
 *
 * - **Durability options.** Every option that matters for durability is spelled out:
 *   never `noSync`, `noMetaSync`, `mapAsync` or `useWritemap` (each can lose or corrupt
 *   acknowledged data). `overlappingSync` + `separateFlushed`: a write's promise resolves
 *   when its transaction is committed, and its `flushed` promise when that transaction's
 *   fdatasync completed. `eventTurnBatching`: all writes of one event-loop turn share one
 *   transaction (group commit).
 * - **Visible before durable.** A committed write is visible to readers before its
 *   fdatasync has completed: readers that must not run ahead of the disk stop at a durable
 *   watermark kept by the caller (see `log.ts`).
 * - **Deferred transaction callbacks.** `env.transaction(cb)` does not run `cb` at the call:
 *   it runs later, with the turn's batch. Whatever `cb` decides must be read inside `cb`.
 * - **Silent overwrite.** `put` replaces an existing value; `putNew` refuses (MDB_NOOVERWRITE)
 *   and resolves false on a collision, which the caller treats as a broken log.
 * - **The exit hook.** lmdb-js syncs every environment with pending writes when the process
 *   exits (a `process.on('exit')` listener and a native cleanup hook both call
 *   `mdb_env_sync(force)`). After a failed fdatasync that second sync can succeed (Linux
 *   dropped the dirty pages) and mark the failed transaction as flushed. `exitWithoutSync`
 *   leaves without running either.
 */
import { open, type Database, type Key, type RootDatabase } from 'lmdb';

export interface EnvironmentOptions {
  readonly path: string;
  readonly readOnly: boolean;
  readonly mapSize: number;
  readonly maxDbs: number;
}

export function openEnvironment(o: EnvironmentOptions): RootDatabase {
  const options = {
    path: o.path,
    readOnly: o.readOnly,
    mapSize: o.mapSize,
    maxDbs: o.maxDbs,
    overlappingSync: true, // the next transaction is built while this one syncs
    separateFlushed: true, // each commit promise carries the promise of its own fdatasync
    eventTurnBatching: true, // one transaction per event-loop turn: group commit
    commitDelay: 0,
    noSync: false,
    noMetaSync: false,
    mapAsync: false,
    useWritemap: false,
    encoding: 'binary' as const,
    cache: false,
    compression: false,
  };
  return open(options);
}

/** A write's commit promise, with the promise of its fdatasync (separateFlushed). */
export type Committed<T> = Promise<T> & { flushed?: Promise<unknown> };

/** Resolves with the write's result once its transaction is committed and fdatasync'ed. */
export function durable<T>(write: Promise<T>): Promise<T> {
  const flushed = (write as Committed<T>).flushed;
  return write.then((v) => (flushed ? flushed.then(() => v) : v));
}

/**
 * Writes `value` at `key` only if the key is free. Resolves true when written, false when
 * the key already held a value (nothing was changed). The promise carries `flushed`.
 */
export function putNew<K extends Key, V>(db: Database<V, K>, key: K, value: V): Committed<boolean> {
  return db.put(key, value, { noOverwrite: true } as never) as Committed<boolean>;
}

/**
 * Ends the process now with `code`, without lmdb-js's exit-time sync (see above) and
 * without any other 'exit' listener. Only for paths where the log must not be synced
 * again: a failed commit or fsync, a stalled writer, an error nobody handled.
 * `process.reallyExit` is what `process.exit` calls after emitting 'exit'; it does not run
 * the native addons' cleanup hooks either (the strace test in test/crash/fsync-fault.test.ts
 * checks that no sync follows a failed one). It does wait for the thread pool, so after a
 * stalled commit (a thread stuck in fdatasync) use `killWithoutSync`.
 */
export function exitWithoutSync(code: number): never {
  const really = (process as unknown as { reallyExit?: (code: number) => never }).reallyExit;
  if (typeof really === 'function') really.call(process, code);
  // Should a later Node.js drop reallyExit: a signal, which runs no hook at all.
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

/**
 * Ends the process now by SIGKILL: for a stalled commit, whose thread stuck in the disk
 * would hold up any orderly exit. No hook runs; the supervisor sees a kill, not exit 1.
 */
export function killWithoutSync(): never {
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}
