/**
 * One writer per log directory. LMDB would let two processes append to the same
 * environment, each handing out the same offsets: an exclusive flock(2) on `crowd.lock`
 * makes the second one refuse to start.
 *
 * The kernel owns the lock: it is tied to the open file description, so it is released
 * when the holder dies however it dies (kill -9, OOM), whatever PID namespace it ran in
 * (two containers sharing a volume), and no starter ever judges another one's liveness by
 * its pid. Node.js has no flock, so `flock(1)` (util-linux) takes it on our descriptor,
 * inherited as its fd 3: the lock belongs to the shared open file description and stays
 * with this process after flock(1) exits. The file is never removed (removing a locked file
 * lets the next starter lock a new inode); it holds the holder's pid, host and start time,
 * for the error message only.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { CrowdError } from '../errors';

export const LOCK_FILE = 'crowd.lock';
/** flock(1)'s exit code when the lock is held by someone else (-E). */
const CONFLICT = 75;

/** Locks `dir` for this process; returns the function that unlocks it. */
export function lockLogDir(dir: string): () => void {
  const file = join(dir, LOCK_FILE);
  const fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o644);
  let locked = false;
  try {
    const r = spawnSync('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(CONFLICT), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
      timeout: 10_000,
    });
    if (r.error) {
      const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
      throw new CrowdError('CROWD_ERR_LOG_LOCKED', `cannot lock log dir ${dir}: ${missing ? 'the flock command (util-linux) is not installed' : r.error.message}`);
    }
    if (r.status === CONFLICT) throw new CrowdError('CROWD_ERR_LOG_LOCKED', `log dir ${dir} (log.dir) is in use by another crowd process (${holder(file)}); one log has one writer`);
    if (r.status !== 0) throw new CrowdError('CROWD_ERR_LOG_LOCKED', `cannot lock ${file}: flock exited ${r.status ?? r.signal}: ${String(r.stderr).trim()}`);
    locked = true;
    ftruncateSync(fd, 0);
    writeSync(fd, `pid ${process.pid} on host ${hostname()} since ${new Date().toISOString()}\n`, 0);
  } finally {
    if (!locked) closeSync(fd);
  }
  let open = true;
  return () => {
    // Closing the only descriptor of the open file description releases the lock.
    if (open) closeSync(fd);
    open = false;
  };
}

function holder(file: string): string {
  try {
    const text = readFileSync(file, 'utf8').trim();
    return text === '' ? 'holder unknown' : text;
  } catch {
    return 'holder unknown';
  }
}
