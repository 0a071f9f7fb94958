/** The bare undici client (bench/undici-client.ts) as a bounded load: exactly N requests, in its own process. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { BENCH_DIST, ROOT, track } from './proc';

/** The JSON line bench/undici-client.ts prints. */
export interface ClientResult {
  requests: number;
  ok: number;
  statuses: Record<string, number>;
  errors: number;
  first_error: string | null;
  seconds: number;
  msg_per_s: number;
  cpu_user_s: number;
  cpu_system_s: number;
  timed_out: boolean;
  undici: string;
}

/**
 * POSTs `count` requests (the suite's BODY) to `url` over `connections` keep-alive connections,
 * one request in flight on each; rejects when the client fails or does not finish within
 * `deadlineS` seconds. The statuses are the caller's to check.
 */
export function runClient(url: string, count: number, connections: number, deadlineS: number): Promise<ClientResult> {
  const argv = [join(BENCH_DIST, 'undici-client.js'), '--url', url, '--count', `${count}`, '--connections', `${connections}`, '--deadline', `${deadlineS}`];
  return new Promise((res, rej) => {
    const proc = track(spawn(process.execPath, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // The client stops itself at the deadline; this only guards against a hung one.
    const timer = setTimeout(() => proc.kill('SIGKILL'), (deadlineS + 30) * 1000);
    proc.once('error', (err) => {
      clearTimeout(timer);
      rej(new Error(`cannot run the undici client: ${err.message}`));
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
      const r = line ? (JSON.parse(line) as ClientResult) : null;
      if (r?.timed_out) {
        rej(new Error(`the client did not finish within ${deadlineS} s: ${r.requests} of ${count} requests answered (${r.ok} 2xx)`));
        return;
      }
      if (code !== 0 || !r) {
        rej(new Error(`the client (node ${argv.join(' ')}) failed (${signal ?? `exit code ${code}`}):\n${stderr}${stdout}`));
        return;
      }
      res(r);
    });
  });
}
