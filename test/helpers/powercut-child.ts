// Child of test/crash/powercut-shim.test.ts, run under the power-cut shim: a known sequence of
// synced and unsynced writes to files in argv[2], then SIGKILL to itself.
import { closeSync, constants, fdatasyncSync, ftruncateSync, openSync, writeSync, writevSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2]!;
// a: synced "AAAA....", then overwritten and extended without a sync.
const a = openSync(join(dir, 'a'), 'w+');
writeSync(a, Buffer.from('AAAAAAAA'), 0, 8, 0);
fdatasyncSync(a);
writeSync(a, Buffer.from('BBBB'), 0, 4, 2);
writevSync(a, [Buffer.from('CC'), Buffer.from('DD')], 8);
writeSync(a, Buffer.from('EE'), 0, 2, 3); // inside a region already covered
// b: synced, then shrunk without a sync.
const b = openSync(join(dir, 'b'), 'w+');
writeSync(b, Buffer.from('0123456789'), 0, 10, 0);
fdatasyncSync(b);
ftruncateSync(b, 3);
// c: unsynced write, then an O_DSYNC write on a second descriptor of the same file.
const c = openSync(join(dir, 'c'), 'w+');
writeSync(c, Buffer.from('xxxxxxxx'), 0, 8, 0);
fdatasyncSync(c);
writeSync(c, Buffer.from('yy'), 0, 2, 0);
const cs = openSync(join(dir, 'c'), constants.O_WRONLY | constants.O_DSYNC);
writeSync(cs, Buffer.from('ZZ'), 0, 2, 4);
closeSync(cs);
// d: never synced at all.
const d = openSync(join(dir, 'd'), 'w+');
writeSync(d, Buffer.from('lost'), 0, 4, 0);
process.kill(process.pid, 'SIGKILL');
