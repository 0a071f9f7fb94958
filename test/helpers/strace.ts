/**
 * strace for tests: parses `strace -f -ttt -T -y` output into calls (joining
 * "<unfinished ...>" with "<... resumed>"), and attaches to a running process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface Call {
  tid: string;
  name: string;
  fdPath: string;
  start: number;
  end: number;
  text: string;
}

/** Parses `strace -f -ttt -T -y` output, joining "<unfinished ...>" with "<... resumed>". */
export function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, { name: string; start: number; text: string }>();
  for (const line of text.split('\n')) {
    const m = /^(\d+)\s+(\d+\.\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, tid, ts, rest] = m as unknown as [string, string, string, string];
    const time = Number(ts);
    const unfinished = /^(\w+)\((.*)<unfinished \.\.\.>$/.exec(rest);
    if (unfinished) {
      open.set(tid, { name: unfinished[1]!, start: time, text: unfinished[2]! });
      continue;
    }
    const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(rest);
    if (resumed) {
      const o = open.get(tid);
      open.delete(tid);
      if (o && o.name === resumed[1]) calls.push(finish(tid, o.name, o.start, time, o.text + resumed[2]));
      continue;
    }
    const call = /^(\w+)\((.*)$/.exec(rest);
    if (!call) continue;
    const dur = /<(\d+\.\d+)>\s*$/.exec(rest);
    calls.push(finish(tid, call[1]!, time, time + (dur ? Number(dur[1]) : 0), call[2]!));
  }
  return calls;
}

function finish(tid: string, name: string, start: number, end: number, text: string): Call {
  const fd = /^\d+<([^>]*)>/.exec(text);
  return { tid, name, start, end, fdPath: fd ? fd[1]! : '', text };
}

/**
 * Attaches `strace -f -ttt -T -y` with `args` (e.g. fault injection) to `pid`; resolves once
 * every thread is attached. Stop it with `kill('SIGINT')` (strace detaches and exits).
 */
export function attachStrace(pid: number, outFile: string, args: string[]): Promise<ChildProcess> {
  const proc = spawn('strace', ['-f', '-ttt', '-T', '-y', '-s', '256', '-p', String(pid), '-o', outFile, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    const timer = setTimeout(() => reject(new Error(`strace did not attach to ${pid} in 10 s: ${lines.join(' ')}`)), 10_000);
    createInterface({ input: proc.stderr! }).on('line', (l) => {
      lines.push(l);
      if (/attached/.test(l)) {
        clearTimeout(timer);
        resolve(proc);
      }
    });
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`strace could not run (apt-get install strace): ${err.message}`));
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`strace exited ${code} before attaching: ${lines.join(' ')}`));
    });
  });
}
