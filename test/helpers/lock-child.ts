/**
 * Child process for the lock race test: waits until the start time given in argv (so that
 * several starters race), tries to lock the log directory, prints LOCKED or REFUSED, and
 * holds the lock until its stdin closes.
 */
import { lockLogDir } from '../../src/log/lock';

const [dir, startAt] = process.argv.slice(2);
const wait = Number(startAt) - Date.now();
setTimeout(() => {
  try {
    lockLogDir(dir!);
    process.stdout.write('LOCKED\n');
  } catch (err) {
    process.stdout.write(`REFUSED ${(err as Error).message}\n`);
  }
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}, Math.max(0, wait));
