import type { LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { CrowdNode } from '../node';
import { createLogger } from '../observability/logger';

/** Time given to 503 answers to leave the sockets after a storage failure, before exit(1). */
const FATAL_EXIT_DELAY_MS = 100;

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
      () => process.exit(node!.state === 'failed' ? 1 : 0),
      (err: Error) => {
        logger.fatal({ event: 'stop_failed', err }, `stop failed: ${err.message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A rejection nobody handled (lmdb-js rejects several promises when a commit fails) is
  // logged as one JSON line; then the process stops, as Node.js would, with exit code 1.
  process.on('unhandledRejection', (reason) => {
    logger.fatal({ event: 'unhandled_rejection', err: reason }, `unhandled rejection: ${(reason as Error)?.message ?? String(reason)}`);
    setTimeout(() => process.exit(1), FATAL_EXIT_DELAY_MS);
  });
  try {
    node = await CrowdNode.start({
      config,
      configFile: file,
      logger,
      onFatal: () => setTimeout(() => process.exit(1), FATAL_EXIT_DELAY_MS),
    });
  } catch (err) {
    const code = err instanceof CrowdError ? err.code : 'CROWD_ERR_START';
    logger.fatal({ event: 'start_failed', code, err }, `crowd could not start: ${(err as Error).message}`);
    process.exit(1);
  }
}
