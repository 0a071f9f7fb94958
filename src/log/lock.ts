/**
 * One writer per log directory. LMDB would let two processes append to the same
 * environment, and each would hand out the same offsets: the lock file (`crowd.lock`,
 * holding the owner's pid) makes the second one refuse to start instead. A lock left by a
 * process that no longer runs (kill -9) is taken over.
 */
import { linkSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CrowdError } from '../errors';

export const LOCK_FILE = 'crowd.lock';

export function lockLogDir(dir: string): () => void {
  const lock = join(dir, LOCK_FILE);
  const tmp = join(dir, `${LOCK_FILE}.${process.pid}`);
  writeFileSync(tmp, `${process.pid}\n`);
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        linkSync(tmp, lock); // atomic: fails if the lock exists
        return () => {
          try {
            unlinkSync(lock);
          } catch {
            // already gone
          }
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = Number(readFileSync(lock, 'utf8').trim());
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) {
        throw new CrowdError('CROWD_ERR_LOG_LOCKED', `log dir ${dir} (log.dir) is in use by another crowd process (pid ${owner}); one log has one writer`);
      }
      unlinkSync(lock); // stale: its owner is gone
    }
    throw new CrowdError('CROWD_ERR_LOG_LOCKED', `could not lock log dir ${dir}: another process keeps taking the lock`);
  } finally {
    unlinkSync(tmp);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
