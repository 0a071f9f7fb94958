// Ensures acknowledged means durable: under `strace -f`, for every sampled request the
// fdatasync of the log's data file completes after the request's bytes were written to that
// file and before the response carrying its id is written to the client socket.
// (kill -9 cannot show this: the page cache survives a process kill.)
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { parseTrace } from '../helpers/strace';

t.test('fdatasync of the data file completes before each ack is written', async (t) => {
  const dir = (await import('../helpers/crowd')).tempDir();
  const traceFile = join(dir, 'strace.txt');
  const wrap = ['strace', '-f', '-qq', '-ttt', '-T', '-y', '-s', '16384', '-e', 'trace=fdatasync,fsync,pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg', '-o', traceFile];
  const crowd = new Crowd({ dir, wrap });
  await crowd.start(30_000);
  t.teardown(() => crowd.stop());

  const tag = randomBytes(4).toString('hex');
  const sent: { marker: string; id: string }[] = [];
  // Sequential requests, then bursts that share group commits.
  for (let i = 0; i < 10; i++) {
    const marker = `FSYNC-${tag}-${i}-END`;
    const r = await request(crowd.url('/leads'), { body: marker });
    t.equal(r.status, 200);
    sent.push({ marker, id: JSON.parse(r.body).id });
  }
  for (let round = 0; round < 4; round++) {
    const burst = Array.from({ length: 10 }, (_, i) => `FSYNC-${tag}-b${round}x${i}-END`);
    const replies = await Promise.all(burst.map((marker) => request(crowd.url('/leads'), { body: marker })));
    replies.forEach((r, i) => {
      t.equal(r.status, 200);
      sent.push({ marker: burst[i]!, id: JSON.parse(r.body).id });
    });
  }
  const pid = JSON.parse(readFileSync(join(crowd.logDir, 'crowd.runtime.json'), 'utf8')).pid as number;
  process.kill(pid, 'SIGTERM');
  const exit = await crowd.waitExit();
  t.equal(exit.code, 0, 'crowd (under strace) exits 0 on SIGTERM');

  const calls = parseTrace(readFileSync(traceFile, 'utf8'));
  const dataFile = join(crowd.logDir, 'crowd.mdb');
  const syncs = calls.filter((c) => (c.name === 'fdatasync' || c.name === 'fsync') && c.fdPath === dataFile && / = 0 /.test(c.text + ' '));
  t.ok(syncs.length > 0, `the trace has fdatasync calls on ${dataFile}`);
  const dataWrites = calls.filter((c) => /^pwrite|^writev$|^write$/.test(c.name) && c.fdPath === dataFile);
  const socketSends = calls.filter((c) => /^(sendto|sendmsg|write|writev)$/.test(c.name) && c.fdPath.startsWith('socket:') || /^(sendto|sendmsg|write|writev)$/.test(c.name) && c.fdPath.startsWith('TCP'));
  let proven = 0;
  for (const { marker, id } of sent) {
    const write = dataWrites.find((c) => c.text.includes(marker));
    const send = socketSends.find((c) => c.text.includes(`Crowd-Id: ${id}`));
    if (!write || !send) {
      t.fail(`request ${marker}: data write ${write ? 'found' : 'missing'}, response ${send ? 'found' : 'missing'} in the trace`);
      continue;
    }
    const flush = syncs.find((s) => s.start >= write.end && s.end <= send.start);
    if (flush) proven++;
    else t.fail(`request ${marker} (${id}): no fdatasync of the data file between its write at ${write.end} and its response at ${send.start}`);
  }
  t.equal(proven, sent.length, `flush-before-ack proven for all ${sent.length} sampled requests`);
});
