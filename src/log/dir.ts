/**
 * Creates the log directory, one component at a time, refusing places no log can live:
 * kernel file systems such as /proc or /sys (Node.js's recursive mkdir spins forever under
 * /proc), and paths whose existing part is not a directory. Every refusal names the path
 * and why.
 */
import { mkdirSync, statSync, statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CrowdError } from '../errors';

/** statfs f_type of kernel file systems that hold no user data. */
const VIRTUAL_FS: ReadonlyMap<number, string> = new Map([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x1cd1, 'devpts'],
  [0xcafe4a11, 'bpf'],
  [0x6165676c, 'pstore'],
  [0x62656570, 'configfs'],
]);

export function makeLogDir(dir: string): void {
  if (dir.trim() === '') throw new CrowdError('CROWD_ERR_LOG_DIR', 'log.dir is empty: name a directory for the log');
  const full = resolve(dir);
  const missing: string[] = [];
  let existing = full;
  for (;;) {
    try {
      const st = statSync(existing);
      if (!st.isDirectory()) throw new CrowdError('CROWD_ERR_LOG_DIR', `log.dir ${dir}: ${existing} exists and is not a directory`);
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOTDIR: some ancestor is a file; walking up finds it and says so.
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw wrap(dir, existing, err);
      missing.unshift(existing);
      const parent = dirname(existing);
      if (parent === existing) throw wrap(dir, existing, err);
      existing = parent;
    }
  }
  const fsType = VIRTUAL_FS.get(statfsSync(existing).type);
  if (fsType !== undefined) throw new CrowdError('CROWD_ERR_LOG_DIR', `log.dir ${dir}: ${existing} is on a ${fsType} file system, which cannot hold a log`);
  for (const d of missing) {
    try {
      mkdirSync(d, { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw wrap(dir, d, err);
      // EEXIST for a path that did not stat: a symbolic link to nowhere.
      try {
        statSync(d);
      } catch {
        throw new CrowdError('CROWD_ERR_LOG_DIR', `log.dir ${dir}: ${d} is a symbolic link to a path that does not exist`);
      }
    }
  }
}

function wrap(dir: string, at: string, err: unknown): CrowdError {
  if (err instanceof CrowdError) return err;
  const e = err as NodeJS.ErrnoException;
  return new CrowdError('CROWD_ERR_LOG_DIR', `log.dir ${dir}: cannot create ${at}: ${e.message}`, { cause: err });
}
