/**
 * The ceiling for the benchmarks: the same native uWebSockets.js binary crowd runs on,
 * doing nothing but reading each request's body and answering `{"status":"OK"}`. Whatever
 * crowd does beyond that (routing, envelope encoding, the LMDB commit and its fsync) shows
 * up as the gap between the two.
 *
 *   node dist/bench/noop-server.js [--port P] [--count]
 *
 * Listens on 127.0.0.1, port 0 by default (the kernel picks a free one) or `--port P`, and
 * prints the bound port as one line on stdout. It exits when its stdin closes.
 *
 * With `--count` (the drain benchmark, where it is crowd's upstream) it also counts the
 * requests it answered: each line "stats" written to its stdin gets one JSON line on stdout,
 * `{"count":N,"first_at":MS,"last_at":MS}` (wall-clock milliseconds of the first and the last
 * answer, null before any), and "reset" sets them back to zero. Without it, nothing is counted.
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { listen, loadNativeUws } from '../src/http/uws';

const OK_BODY = '{"status":"OK"}';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      count: { type: 'boolean', default: false },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be 0-65535, got "${values.port}"`);
  const counting = values.count;
  let count = 0;
  let firstAt: number | null = null;
  let lastAt: number | null = null;

  const uws = loadNativeUws();
  const app = uws.App();
  app.any('/*', (res) => {
    // uWS forbids touching a response after the client went away, so track it as crowd does.
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    // Answer only once the whole body arrived: crowd has to read it, so the ceiling must too.
    res.onData((_chunk, isLast) => {
      if (!isLast || aborted) return;
      res.cork(() => {
        res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json').end(OK_BODY);
      });
      if (counting) {
        count++;
        lastAt = Date.now();
        if (firstAt === null) firstAt = lastAt;
      }
    });
  });
  const bound = await listen(uws, app, '127.0.0.1', port);
  process.stdout.write(`${bound.port}\n`);
  // The benchmark holds our stdin open; when it goes away (even killed with SIGKILL), so do we,
  // instead of lingering on the port.
  process.stdin.on('end', () => process.exit(0));
  if (counting) {
    createInterface({ input: process.stdin }).on('line', (line) => {
      const command = line.trim();
      if (command === 'stats') process.stdout.write(`${JSON.stringify({ count, first_at: firstAt, last_at: lastAt })}\n`);
      else if (command === 'reset') {
        count = 0;
        firstAt = lastAt = null;
      }
    });
  } else {
    process.stdin.resume();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`noop-server: ${err.message}\n`);
  process.exit(1);
});
