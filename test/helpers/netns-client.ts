/**
 * A load client to run inside a network namespace (see netns.ts):
 *   node dist/test/helpers/netns-client.js --url http://IP:PORT/leads --count N --concurrency C --timeout-ms T
 * POSTs `{"n": i}` for i in 0..N-1, C at a time, each bounded by T ms from its start to its
 * answer's end, and prints one JSON line per request:
 *   {"i":..,"status":..,"id":..,"ms":..}   (id: the acknowledgement's Crowd-Id, else the body's "id")
 *   {"i":..,"status":null,"id":null,"ms":..,"error":".."}   (no answer: connection error or timeout)
 * Exits 0 once every request has its line.
 */
import http from 'node:http';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) {
    process.stderr.write(`usage: netns-client --url URL --count N --concurrency C --timeout-ms T (--${name} missing)\n`);
    process.exit(2);
  }
  return v;
}

function bounded(name: string, fallback: string, min: number, max: number): number {
  const v = Number(arg(name, fallback));
  if (!Number.isInteger(v) || v < min || v > max) {
    process.stderr.write(`--${name} must be an integer in ${min}..${max}\n`);
    process.exit(2);
  }
  return v;
}

const url = arg('url');
const count = bounded('count', '1', 1, 1_000_000);
const concurrency = bounded('concurrency', '1', 1, 1024);
const timeoutMs = bounded('timeout-ms', '5000', 1, 600_000);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });

interface Line {
  i: number;
  status: number | null;
  id: string | null;
  ms: number;
  error?: string;
}

function send(i: number): Promise<Line> {
  const started = Date.now();
  const body = JSON.stringify({ n: i });
  return new Promise((resolve) => {
    let done = false;
    const finish = (l: Omit<Line, 'ms'>): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ ...l, ms: Date.now() - started });
    };
    const req = http.request(url, { method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (err) => finish({ i, status: null, id: null, error: (err as NodeJS.ErrnoException).code ?? err.message }));
      res.on('end', () => {
        let id = typeof res.headers['crowd-id'] === 'string' ? res.headers['crowd-id'] : null;
        if (id === null) {
          try {
            const j = JSON.parse(Buffer.concat(chunks).toString());
            if (typeof j?.id === 'string') id = j.id;
          } catch {
            // not JSON: no id
          }
        }
        finish({ i, status: res.statusCode ?? null, id });
      });
    });
    const timer = setTimeout(() => {
      finish({ i, status: null, id: null, error: `timeout after ${timeoutMs} ms` });
      req.destroy();
    }, timeoutMs);
    req.on('error', (err) => finish({ i, status: null, id: null, error: (err as NodeJS.ErrnoException).code ?? err.message }));
    req.end(body);
  });
}

async function main(): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const line = await send(next++);
      process.stdout.write(`${JSON.stringify(line)}\n`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  agent.destroy();
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${(err as Error).stack}\n`);
    process.exit(1);
  },
);
