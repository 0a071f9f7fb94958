/**
 * Child process for the fault-injection test of `exitWithoutSync`: opens an environment the
 * way the log does, makes one write durable, says READY, and on a line on stdin writes again;
 * when that write fails (the test injects EIO into fdatasync) it leaves with exit code 7,
 * either through `process.exit` (argv[3] = "exit", lmdb-js's exit hooks run) or through
 * `exitWithoutSync` (argv[3] = "without").
 */
import { join } from 'node:path';
import { durable, exitWithoutSync, openEnvironment } from '../../src/log/lmdb';

const [dir, mode] = process.argv.slice(2);
const env = openEnvironment({ path: join(dir!, 'x.mdb'), readOnly: false, mapSize: 64 * 1024 * 1024, maxDbs: 2 });
const db = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });

void (async () => {
  await durable(db.put(1, Buffer.from('first')));
  process.stdout.write('READY\n');
  process.stdin.once('data', () => {
    durable(db.put(2, Buffer.from('second'))).then(
      () => {
        process.stdout.write('WRITTEN\n');
        exitWithoutSync(8);
      },
      (err: Error) => {
        process.stdout.write(`FAILED ${err.message}\n`);
        if (mode === 'exit') process.exit(7);
        else exitWithoutSync(7);
      },
    );
  });
})();
process.on('unhandledRejection', () => undefined); // lmdb-js rejects several promises per failed commit
