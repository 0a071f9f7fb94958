/**
 * One catalogue of crowd's error codes. Callers branch on `err.code`, never on the
 * message text; the message says what is wrong and where.
 */
export const ErrorCodes = {
  CROWD_ERR_CONFIG: 'invalid configuration',
  CROWD_ERR_UWS_NATIVE: 'the native uWebSockets.js binary did not load',
  CROWD_ERR_LISTEN: 'could not listen on a configured address',
  CROWD_ERR_LOG_COMMIT: 'a log commit or fsync failed',
  CROWD_ERR_LOG_STALLED: 'a log commit or flush has not completed in 30 s',
  CROWD_ERR_LOG_CLOSED: 'the log is closed',
  CROWD_ERR_LOG_LOCKED: 'another process writes to this log directory',
  CROWD_ERR_LOG_DIR: 'the log directory cannot be created or used',
  CROWD_ERR_LOG_OFFSET: 'the log offset invariant was broken',
  CROWD_ERR_LOG_RECOVERY: 'the log must be recovered by crowd start before it can be read',
  CROWD_ERR_ADMIN: 'the admin API answered with an error',
  CROWD_ERR_HELD: 'a retry or dead-letter record cannot be read',
  CROWD_ERR_REPLICA: 'no such replica is held here',
  CROWD_ERR_REPLAY: 'a replay or dead-letter request was refused',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class CrowdError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'CrowdError';
  }
}
