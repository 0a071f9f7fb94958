import type { LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { exitWithoutSync, killWithoutSync } from '../log/lmdb';
import { CrowdNode } from '../node';
import { createLogger } from '../observability/logger';

/** Time given to 503 answers to leave the sockets after a storage failure, before exit(1). */
const FATAL_EXIT_DELAY_MS = 100;

/**
 * Every way out after a failure: exit 1 without the log library's exit-time sync, which
 * after a failed fdatasync could mark the failed transaction as flushed (see log/lmdb.ts).
 * What was acknowledged was flushed already; nothing else may be synced now.
 */
function failExit(err?: unknown): void {
  // A stalled commit leaves a thread stuck in the disk, which an orderly exit would wait for.
  const stalled = err instanceof CrowdError && err.code === 'CROWD_ERR_LOG_STALLED';
  setTimeout(() => (stalled ? killWithoutSync() : exitWithoutSync(1)), FATAL_EXIT_DELAY_MS);
}

export async function startCommand({ file, config }: LoadedConfig): Promise<void> {
  const logger = createLogger(config.node_id);
  let node: CrowdNode | null = null;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping || !node) {
      if (!node) process.exit(0);
      return;
    }
    stopping = true;
    node.stop(signal).then(
      // After a failure the fatal path has already scheduled its exit (without syncing).
      // A clean stop flushed everything and left the log open: exit without its close-time sync.
      () => (node!.state === 'failed' ? undefined : exitWithoutSync(0)),
      (err: Error) => {
        logger.fatal({ event: 'stop_failed', err }, `stop failed: ${err.message}`);
        exitWithoutSync(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A rejection nobody handled (lmdb-js rejects several promises when a commit fails) is
  // logged as one JSON line; then the process stops, as Node.js would, with exit code 1.
  process.on('unhandledRejection', (reason) => {
    logger.fatal({ event: 'unhandled_rejection', err: reason }, `unhandled rejection: ${(reason as Error)?.message ?? String(reason)}`);
    failExit();
  });
  // Likewise an exception nobody caught (a broken invariant in a timer): one line, exit 1,
  // and no exit-time sync of the log (Node.js's default would run the 'exit' listeners).
  process.on('uncaughtException', (err) => {
    logger.fatal({ event: 'uncaught_exception', err }, `uncaught exception: ${err?.message ?? String(err)}`);
    failExit();
  });
  try {
    node = await CrowdNode.start({
      config,
      configFile: file,
      logger,
      onFatal: (err) => failExit(err),
    });
  } catch (err) {
    // One clear line: what failed and why. A stack trace only for errors crowd did not expect.
    const known = err instanceof CrowdError;
    const code = known ? err.code : 'CROWD_ERR_START';
    logger.fatal({ event: 'start_failed', code, ...(known ? {} : { err }) }, `crowd could not start: ${(err as Error).message}`);
    exitWithoutSync(1);
  }
}
