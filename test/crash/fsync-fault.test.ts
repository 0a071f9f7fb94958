// Ensures the fatal path never syncs again after a failed fsync or write (fsyncgate): with
// strace injecting EIO into fdatasync (or into pwrite), crowd answers 503, logs why, exits 1,
// and the trace shows no sync and no write of the data file after the failure. lmdb-js's
// exit hook would sync again (and mark the failed transaction as flushed); the negative
// control shows that this test sees it when the process leaves through process.exit.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Crowd, ROOT, tempDir } from '../helpers/crowd';
import { request, type Reply } from '../helpers/http';
import { LoadClient } from '../helpers/load';
import { Upstream } from '../helpers/upstream';
import { attachStrace, parseTrace, type Call } from '../helpers/strace';
import { Log } from '../../src/log/log';

const TRACED = ['-e', 'trace=fdatasync,fsync,msync,sync_file_range,pwrite64,pwritev,pwritev2,write,writev,exit_group'];

/** The calls on `file` after the first injected failure: syncs of any kind, and writes. */
function afterFailure(calls: Call[], file: string): { failure: Call | undefined; later: Call[] } {
  const failure = calls.find((c) => /\(INJECTED\)/.test(c.text) && c.fdPath === file);
  if (!failure) return { failure, later: [] };
  const later = calls.filter((c) => c.start > failure.end && c.fdPath === file && /sync|write/.test(c.name));
  return { failure, later };
}

function describe(calls: Call[]): string {
  return calls.map((c) => `${c.name}(${c.fdPath}) = ${c.text.slice(-40).trim()}`).join('; ');
}

async function childRun(mode: 'exit' | 'without'): Promise<{ code: number | null; out: string; calls: Call[]; file: string }> {
  const dir = tempDir('crowd-lmdb-exit-');
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'test', 'helpers', 'lmdb-exit-child.js'), dir, mode], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      out += l + '\n';
      if (l === 'READY') resolve();
    });
    child.once('exit', (code) => reject(new Error(`child exited ${code} before READY: ${out}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await ready;
  const traceFile = join(dir, 'strace.txt');
  const strace = await attachStrace(child.pid!, traceFile, [...TRACED, '-e', 'inject=fdatasync:error=EIO']);
  child.stdin!.write('go\n');
  const code = await exited;
  await new Promise((r) => strace.once('exit', r));
  return { code, out, calls: parseTrace(readFileSync(traceFile, 'utf8')), file: join(dir, 'x.mdb') };
}

t.test('negative control: leaving through process.exit syncs again after a failed fdatasync', async (t) => {
  const r = await childRun('exit');
  t.match(r.out, /FAILED/, 'the write failed');
  t.equal(r.code, 7);
  const { failure, later } = afterFailure(r.calls, r.file);
  t.ok(failure, 'the trace shows the injected failure');
  t.ok(
    later.some((c) => /sync/.test(c.name)),
    `lmdb-js's exit hook syncs the data file again after the failure (${describe(later)})`,
  );
});

t.test('exitWithoutSync leaves without syncing or writing the data file again', async (t) => {
  const r = await childRun('without');
  t.match(r.out, /FAILED/, 'the write failed');
  t.equal(r.code, 7, 'the exit code is kept');
  const { failure, later } = afterFailure(r.calls, r.file);
  t.ok(failure, 'the trace shows the injected failure');
  t.same(later, [], `nothing touches the data file after the failure (${describe(later)})`);
});

async function crowdFault(t: Test, inject: string, abortAllowed = false): Promise<void> {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const acked: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await request(crowd.url('/leads'), { body: `before-${i}` });
    t.equal(r.status, 200, 'acknowledged before the fault');
    acked.push(JSON.parse(r.body).id);
  }
  const pid = crowd.proc!.pid!;
  const traceFile = join(crowd.dir, 'strace.txt');
  const strace = await attachStrace(pid, traceFile, [...TRACED, '-e', inject]);
  const replies = await Promise.all(
    Array.from({ length: 5 }, (_, i) => request(crowd.url('/leads'), { body: `during-${i}`, timeoutMs: 5000 }).catch((err: Error): Reply => ({ status: 0, headers: {}, body: err.message }))),
  );
  const exit = await crowd.waitExit();
  await new Promise((r) => strace.once('exit', r));
  const answered = replies.filter((r) => r.status !== 0);
  t.ok(answered.length > 0, `some requests were answered (${replies.map((r) => r.status).join(', ')})`);
  t.ok(
    answered.every((r) => r.status === 503 && r.headers['retry-after'] !== undefined),
    'every request during the fault got 503 + Retry-After, none an acknowledgement',
  );
  if (abortAllowed && exit.signal === 'SIGABRT') {
    // lmdb-js 3.5.6 sometimes corrupts its heap on the error path of a failed page write
    // (glibc: "corrupted size vs. prev_size"), and the process aborts after the 503s and the
    // log line: still non-zero, still no sync (checked below).
    t.comment('crowd aborted (SIGABRT) on its way out: the known lmdb-js heap corruption after a failed pwrite');
  } else t.equal(exit.code, 1, `crowd exits 1 (${exit.code ?? exit.signal})`);
  const logText = crowd.lines.join('\n');
  t.match(logText, /"event":"log_failed"/, 'the failure is logged');
  t.match(logText, /Input\/output error|EIO|code 5/, 'with its cause');
  const { failure, later } = afterFailure(parseTrace(readFileSync(traceFile, 'utf8')), join(crowd.logDir, 'crowd.mdb'));
  t.ok(failure, 'the trace shows the injected failure on the data file');
  t.same(later, [], `no sync and no write of the data file follows the failure (${describe(later)})`);

  // What was acknowledged before the fault is still there after a restart.
  const log = await Log.open({ dir: crowd.logDir, maxPendingWrites: 1, maxBytes: 1e12, retentionMs: 0, consumers: [], readOnly: true });
  const ids = new Set(log.read(1, 1000).map((e) => e.id));
  await log.close();
  t.ok(
    acked.every((id) => ids.has(id)),
    'every request acknowledged before the fault is in the log',
  );
  await crowd.start();
  t.equal((await request(crowd.url('/leads'), { body: 'after' })).status, 200, 'the restarted node accepts requests');
}

t.test('EIO on fdatasync: 503, exit 1, no sync or data-file write after the failure', (t) => crowdFault(t, 'inject=fdatasync:error=EIO'));

t.test('EIO on pwrite: 503, exit 1, no sync or data-file write after the failure', (t) => crowdFault(t, 'inject=pwrite64,pwritev:error=EIO', true));

t.test('EIO on the last fdatasync while stopping (SIGTERM): no sync after the failure', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  t.equal((await request(crowd.url('/leads'), { body: 'before' })).status, 200);
  const traceFile = join(crowd.dir, 'strace.txt');
  const strace = await attachStrace(crowd.proc!.pid!, traceFile, [...TRACED, '-e', 'inject=fdatasync:error=EIO']);
  // Idle node: the first fdatasync after SIGTERM is the one of the last statistics write.
  const exit = await crowd.sigterm();
  await new Promise((r) => strace.once('exit', r));
  // lmdb-js does not always report a failed flush of the last transaction, so the exit code
  // may be 0; what matters is that nothing syncs the file again after the failure.
  t.comment(`exit ${exit.code ?? exit.signal}`);
  t.ok(exit.code === 0 || exit.code === 1, `crowd exits (${exit.code ?? exit.signal})`);
  const { failure, later } = afterFailure(parseTrace(readFileSync(traceFile, 'utf8')), join(crowd.logDir, 'crowd.mdb'));
  t.ok(failure, 'the trace shows the injected failure on the data file');
  t.same(later, [], `no sync and no write of the data file follows it (${describe(later)})`);
});

t.test('EIO on fdatasync under load with delivery: nothing is written or synced after the failure', async (t) => {
  const up = await Upstream.start();
  t.teardown(() => up.close());
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: `http://127.0.0.1:${up.port}`, concurrency: 16 }],
    },
  });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 32, maxRequests: 100_000, tag: 'fault', timeoutMs: 5000 }).start();
  t.teardown(() => client.stop());
  await new Promise((r) => setTimeout(r, 1000)); // ingest commits and delivery commits overlap
  const traceFile = join(crowd.dir, 'strace.txt');
  const strace = await attachStrace(crowd.proc!.pid!, traceFile, [...TRACED, '-e', 'inject=fdatasync:error=EIO']);
  const exit = await crowd.waitExit();
  await new Promise((r) => strace.once('exit', r));
  await client.stop();
  t.ok(client.acks.length > 100, `the node was busy (${client.acks.length} acknowledged)`);
  t.ok(exit.code === 1 || exit.signal === 'SIGABRT', `crowd exits non-zero (${exit.code ?? exit.signal})`);
  const { failure, later } = afterFailure(parseTrace(readFileSync(traceFile, 'utf8')), join(crowd.logDir, 'crowd.mdb'));
  t.ok(failure, 'the trace shows the injected failure on the data file');
  t.same(later, [], `no write and no sync of the data file follows it (${describe(later.slice(0, 5))})`);
});
