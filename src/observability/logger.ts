/**
 * JSON log lines on stdout (pino). Synchronous writes: a crash-stop logs its cause and
 * exits right after, and the line must not be lost in a buffer.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(nodeId: string, level: string = process.env.CROWD_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    {
      level,
      base: { node: nodeId },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ dest: 1, sync: true }),
  );
}
