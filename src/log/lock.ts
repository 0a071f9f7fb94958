/**
 * One writer per log directory. LMDB would let two processes append to the same
 * environment, and each would hand out the same offsets: the lock file (`crowd.lock`,
 * holding the owner's pid) makes the second one refuse to start instead. A lock left by a
 * process that no longer runs (kill -9) is taken over.
 */
import { linkSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CrowdError } from '../errors';

export const LOCK_FILE = 'crowd.lock';

export function lockLogDir(dir: string): () => void {
  const lock = join(dir, LOCK_FILE);
  const tmp = join(dir, `${LOCK_FILE}.${process.pid}`);
  writeFileSync(tmp, `${process.pid}\n`);
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        linkSync(tmp, lock); // atomic: fails if the lock exists
        return () => {
          // Only our own lock: a process that took over a lock it thought stale keeps its own.
          if (readOwner(lock) === process.pid) unlinkSync(lock);
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = readOwner(lock);
      if (owner !== null && owner !== process.pid && alive(owner)) throw locked(dir, owner);
      // Stale. Move it aside atomically, then look at what was moved: if another starter
      // replaced the stale lock with its own in the meantime, put that one back and refuse.
      const aside = join(dir, `${LOCK_FILE}.stale.${process.pid}`);
      try {
        renameSync(lock, aside);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // someone else moved it
        throw err;
      }
      const moved = readOwner(aside);
      if (moved !== null && moved !== owner && moved !== process.pid && alive(moved)) {
        try {
          linkSync(aside, lock);
        } finally {
          unlinkSync(aside);
        }
        throw locked(dir, moved);
      }
      unlinkSync(aside);
    }
    throw new CrowdError('CROWD_ERR_LOG_LOCKED', `could not lock log dir ${dir}: another process keeps taking the lock`);
  } finally {
    unlinkSync(tmp);
  }
}

function readOwner(file: string): number | null {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function locked(dir: string, owner: number): CrowdError {
  return new CrowdError('CROWD_ERR_LOG_LOCKED', `log dir ${dir} (log.dir) is in use by another crowd process (pid ${owner}); one log has one writer`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
