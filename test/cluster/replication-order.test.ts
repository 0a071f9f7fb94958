// Ordering from outside: with cluster.ack = "quorum", a 2xx is written to the client only
// after the follower has made the request durable. Two nodes, min_insync = 2, so every ack
// depends on the one follower; both run under `strace -f -ttt -T` (wall-clock timestamps,
// one clock for both traces). For every acknowledged request:
//   follower trace: the first write of its body to crowd.mdb (the replica record), the first
//     fdatasync of crowd.mdb that starts after that write returned, and the "flushed" meta
//     page LMDB writes after it through its O_DSYNC descriptor (the commit is durable when
//     that write returns; see test/crash/powercut.test.ts);
//   leader trace: the socket write of the response carrying `Crowd-Id: <id>` (the socket's
//     writes are joined into one stream: a response can take several calls);
// and the follower's fdatasync and meta write must both have returned before the leader
// started writing the response. The first fdatasync after the write is the earliest one that
// can have covered it (commits and their syncs run on several threads), so the check is
// never stricter than the truth; a request missing from either trace fails it.
import t from 'tap';
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Cluster, caughtUp } from '../helpers/cluster';
import { tempDir, type Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { parseTrace, type Call } from '../helpers/strace';

const REQUESTS = 300;
const WORKERS = 8;
const MIN_SAMPLES = 20;

const straceCheck = spawnSync('strace', ['-V'], { encoding: 'utf8' });
if (straceCheck.error || straceCheck.status !== 0) {
  throw new Error(`strace is required for this test and could not run (${straceCheck.error?.message ?? straceCheck.stderr}); \`make deps\` installs it`);
}

function wrapFor(traceFile: string): string[] {
  return ['strace', '-f', '-qq', '-ttt', '-T', '-y', '-s', '65536', '-e', 'trace=openat,fdatasync,fsync,pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg', '-o', traceFile];
}

/** The crowd process under strace (strace's own pid is `node.proc.pid`). */
function crowdPid(node: Crowd): number | null {
  const f = join(node.logDir, 'crowd.runtime.json');
  if (!existsSync(f)) return null;
  return JSON.parse(readFileSync(f, 'utf8')).pid as number;
}

const fdOf = (c: Call): number => Number(/^(\d+)</.exec(c.text)?.[1] ?? -1);
/** The call returned a non-negative value (the text ends with "= N <duration>"). */
const ok = (c: Call): boolean => / = \d+(<[^>]*>)? <\d+\.\d+>\s*$/.test(c.text);

t.test('a quorum 2xx is written only after the follower fdatasync of the replica record returned', async (t) => {
  const dirs = [tempDir(), tempDir()];
  const traces = dirs.map((d) => join(d, 'strace.txt'));
  const cluster = await Cluster.create({
    nodes: 2,
    ack: 'quorum',
    minInsync: 2,
    ackTimeout: '10s',
    perNode: (i) => ({ dir: dirs[i]!, wrap: wrapFor(traces[i]!) }),
  });
  const [leader, follower] = cluster.nodes as [Crowd, Crowd];
  t.teardown(async () => {
    // SIGKILL to strace alone could leave the traced crowd running: kill crowd itself too.
    for (const n of cluster.nodes) {
      const pid = n.proc && n.proc.exitCode === null && n.proc.signalCode === null ? crowdPid(n) : null;
      if (pid !== null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    await cluster.stop();
    // The traces are kept when the test fails, for a look at them.
    if (t.passing()) for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  await Promise.all(cluster.nodes.map((n) => n.start(30_000)));

  // The leader refuses quorum writes until the follower replicates from it.
  const deadline = Date.now() + 15_000;
  while (!(await caughtUp(leader))) {
    if (Date.now() > deadline) throw new Error('the follower did not start replicating the leader within 15 s');
    await new Promise((r) => setTimeout(r, 100));
  }

  const tag = randomBytes(4).toString('hex');
  const acked: { marker: string; id: string }[] = [];
  const others: string[] = [];
  const agent = new http.Agent({ keepAlive: true, maxSockets: WORKERS });
  let seq = 0;
  await Promise.all(
    Array.from({ length: WORKERS }, async () => {
      while (seq < REQUESTS) {
        const marker = `ORDER-${tag}-${seq++}-END`;
        const r = await request(leader.url('/leads'), { body: JSON.stringify({ marker }), agent, timeoutMs: 15_000 });
        if (r.status === 200) acked.push({ marker, id: JSON.parse(r.body).id });
        else others.push(`${r.status} ${r.body}`);
      }
    }),
  );
  agent.destroy();
  t.same(others, [], 'every request was acknowledged with 200');
  t.equal(acked.length, REQUESTS, `${acked.length} requests acknowledged`);

  // SIGTERM to crowd (not to strace): both exit cleanly and strace writes out its trace.
  for (const n of [leader, follower]) {
    const pid = crowdPid(n);
    if (pid === null) throw new Error(`no runtime file for node at ${n.dir}`);
    process.kill(pid, 'SIGTERM');
  }
  const exits = await Promise.all([leader.waitExit(), follower.waitExit()]);
  t.same(exits.map((e) => e.code), [0, 0], 'both nodes (under strace) exit 0 on SIGTERM');

  // Follower: the data file's descriptors.
  const fcalls = parseTrace(readFileSync(traces[1]!, 'utf8'));
  const dataFile = join(follower.logDir, 'crowd.mdb');
  const dsyncFds = new Set<number>();
  for (const c of fcalls) {
    if (c.name !== 'openat' || !c.text.includes(`"${dataFile}"`) || !/O_DSYNC|O_SYNC/.test(c.text)) continue;
    const fd = / = (\d+)/.exec(c.text);
    if (fd) dsyncFds.add(Number(fd[1]));
  }
  t.ok(dsyncFds.size > 0, `the follower trace shows ${dataFile} opened with O_DSYNC (fds ${[...dsyncFds].join(', ')}): LMDB's meta page descriptor`);
  const syncs = fcalls.filter((c) => (c.name === 'fdatasync' || c.name === 'fsync') && c.fdPath === dataFile && ok(c));
  t.ok(syncs.length > 0, `the follower trace has ${syncs.length} fdatasync calls on ${dataFile}`);
  const dataWrites = fcalls.filter((c) => /^(pwrite64|pwritev2?|writev|write)$/.test(c.name) && c.fdPath === dataFile && !dsyncFds.has(fdOf(c)) && ok(c));
  const metaWrites = fcalls.filter((c) => c.name === 'pwrite64' && c.fdPath === dataFile && dsyncFds.has(fdOf(c)) && ok(c));
  t.ok(metaWrites.length > 0, `the follower trace has ${metaWrites.length} meta page writes through the O_DSYNC descriptor`);

  // Leader: what it wrote on each socket, as one byte stream per socket, so that a response
  // written in several calls is found whole and its first call is known.
  const streams = socketStreams(parseTrace(readFileSync(traces[0]!, 'utf8')));
  const responses = [...streams.values()].reduce((n, s) => n + (s.text.match(/Crowd-Id: /g)?.length ?? 0), 0);
  t.ok(responses > 0, `the leader trace has ${responses} responses carrying a Crowd-Id header on ${streams.size} sockets`);

  let proven = 0;
  let whole = 0;
  let minSync = Infinity;
  let minMeta = Infinity;
  let minSyncAt = '';
  let minMetaAt = '';
  const failures: string[] = [];
  for (const { marker, id } of acked) {
    const write = dataWrites.find((c) => c.text.includes(marker));
    const send = findResponse(streams, id);
    if (!write || !send) {
      failures.push(`${marker} (${id}): follower data write ${write ? 'found' : 'missing'}, leader response ${send ? 'found' : 'missing'}`);
      continue;
    }
    if (send.status !== 200) {
      failures.push(`${marker} (${id}): the leader's response carrying its id has status ${send.status}`);
      continue;
    }
    const sync = syncs.find((s) => s.start >= write.end);
    const meta = sync && metaWrites.find((m) => m.tid === sync.tid && m.start >= sync.end);
    if (!sync || !meta) {
      failures.push(`${marker} (${id}): written on the follower at ${write.end.toFixed(6)}, no ${sync ? 'O_DSYNC meta write' : 'fdatasync'} after it in the follower trace`);
      continue;
    }
    // The response's first byte: the first call that wrote any of it.
    const syncMargin = send.first.start - sync.end;
    const metaMargin = send.first.start - meta.end;
    if (syncMargin <= 0 || metaMargin <= 0) {
      failures.push(
        `${marker} (${id}): leader started writing the 200 at ${send.first.start.toFixed(6)}, but the follower's fdatasync returned at ${sync.end.toFixed(6)} (${(syncMargin * 1e6).toFixed(0)} µs) and its meta write at ${meta.end.toFixed(6)} (${(metaMargin * 1e6).toFixed(0)} µs); replica record written at ${write.end.toFixed(6)}`,
      );
      continue;
    }
    proven++;
    if (send.first === send.last) whole++;
    if (syncMargin < minSync) [minSync, minSyncAt] = [syncMargin, marker];
    if (metaMargin < minMeta) [minMeta, minMetaAt] = [metaMargin, marker];
  }
  for (const f of failures.slice(0, 20)) t.fail(f);
  if (failures.length > 20) t.fail(`... and ${failures.length - 20} more`);
  // A quorum ack is written outside uWebSockets.js's handler of the follower's socket, so it is
  // corked: status line through id in one call (in pieces, it would cost a syscall each).
  t.equal(whole, proven, `${whole} of ${proven} quorum responses left in one write`);
  t.ok(proven >= MIN_SAMPLES, `at least ${MIN_SAMPLES} acknowledged requests matched in both traces (${proven})`);
  t.equal(proven, acked.length, `follower durable before the leader's 2xx for ${proven} of ${acked.length} acknowledged requests; smallest margins: fdatasync end -> 2xx ${(minSync * 1e6).toFixed(0)} µs (${minSyncAt}), O_DSYNC meta write end -> 2xx ${(minMeta * 1e6).toFixed(0)} µs (${minMetaAt})`);
});

/** The bytes of a strace string literal (C escapes and octal; `-x` hex too). */
function unescape(lit: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < lit.length; i++) {
    const ch = lit[i]!;
    if (ch !== '\\') {
      out.push(ch.charCodeAt(0) & 0xff);
      continue;
    }
    const n = lit[++i]!;
    const simple: Record<string, number> = { n: 10, r: 13, t: 9, v: 11, f: 12, '"': 34, '\\': 92 };
    if (n in simple) out.push(simple[n]!);
    else if (n === 'x') {
      out.push(parseInt(lit.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (/[0-7]/.test(n)) {
      const oct = /^[0-7]{1,3}/.exec(lit.slice(i))![0];
      out.push(parseInt(oct, 8));
      i += oct.length - 1;
    } else out.push(n.charCodeAt(0));
  }
  return Buffer.from(out);
}

interface Stream {
  /** Everything written on the socket, latin1. */
  text: string;
  /** The call that wrote each run of it: [first byte offset, call], ascending. */
  runs: [number, Call][];
}

/** Per socket (by inode): the bytes the process wrote, in order, and which call wrote them. */
function socketStreams(calls: Call[]): Map<string, Stream> {
  const streams = new Map<string, Stream>();
  for (const c of calls) {
    if (!/^(sendto|sendmsg|write|writev)$/.test(c.name) || !/^(socket:|TCP)/.test(c.fdPath)) continue;
    const ret = / = (\d+) <\d+\.\d+>\s*$/.exec(c.text);
    if (!ret) continue;
    // Every string literal in the call is payload (sendto/write: one; writev/sendmsg: the iovecs).
    const literals = [...c.text.matchAll(/"((?:[^"\\]|\\.)*)"(\.\.\.)?/g)];
    const bytes = Buffer.concat(literals.map((m) => unescape(m[1]!))).subarray(0, Number(ret[1]));
    if (bytes.length < Number(ret[1])) throw new Error(`strace cut a socket write short (raise -s): ${c.text.slice(0, 200)}`);
    let s = streams.get(c.fdPath);
    if (!s) streams.set(c.fdPath, (s = { text: '', runs: [] }));
    s.runs.push([s.text.length, c]);
    s.text += bytes.toString('latin1');
  }
  return streams;
}

/** The response carrying `Crowd-Id: <id>`: its status and the call that wrote its first byte. */
function findResponse(streams: Map<string, Stream>, id: string): { status: number; first: Call; last: Call } | null {
  for (const s of streams.values()) {
    const at = s.text.indexOf(`\r\nCrowd-Id: ${id}\r\n`);
    if (at < 0) continue;
    const start = s.text.lastIndexOf('HTTP/1.1 ', at);
    if (start < 0) return null;
    const callAt = (offset: number): Call => {
      let found = s.runs[0]![1];
      for (const [o, c] of s.runs) {
        if (o > offset) break;
        found = c;
      }
      return found;
    };
    return { status: Number(s.text.slice(start + 9, start + 12)), first: callAt(start), last: callAt(at) };
  }
  return null;
}
