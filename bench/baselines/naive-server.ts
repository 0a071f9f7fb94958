/**
 * The naive durable baseline: what "fsync before ack" costs without any batching. A plain
 * node:http server that, for every POST, appends the body and a newline to one file with
 * fs.writeSync, then fs.fdatasyncSync (one fdatasync per request, nothing shared), and only
 * then answers `200 {"status":"OK"}`. Both calls are synchronous, so requests are stored one
 * after the other: the event loop is blocked for each fdatasync.
 *
 *   node dist/bench/baselines/naive-server.js --file PATH
 *
 * Listens on 127.0.0.1, port 0 (the kernel picks one), prints the bound port as one line on
 * stdout, and exits when its stdin closes. Anything other than POST gets 405.
 */
import { closeSync, fdatasyncSync, openSync, writeSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const OK_BODY = '{"status":"OK"}';
const NEWLINE = Buffer.from('\n');

function main(): void {
  const { values } = parseArgs({ options: { file: { type: 'string' } } });
  if (!values.file) throw new Error('--file PATH is required');
  const fd = openSync(values.file, 'a');

  const server = createServer((req, res) => {
    if (req.method !== 'POST') {
      res.writeHead(405, { 'Content-Type': 'application/json' }).end('{"status":"method not allowed"}');
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      try {
        writeSync(fd, Buffer.concat([...chunks, NEWLINE]));
        fdatasyncSync(fd);
      } catch (err) {
        res.writeHead(500, { 'Content-Type': 'application/json' }).end(JSON.stringify({ status: (err as Error).message }));
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(OK_BODY);
    });
  });
  // wrk keeps its connections open for the whole run; don't let idle timers close them.
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('no TCP address');
    process.stdout.write(`${address.port}\n`);
  });
  // The benchmark holds our stdin open; when it goes away (even killed with SIGKILL), so do we.
  process.stdin.on('end', () => {
    closeSync(fd);
    process.exit(0);
  });
  process.stdin.resume();
}

try {
  main();
} catch (err) {
  process.stderr.write(`naive-server: ${(err as Error).message}\n`);
  process.exit(1);
}
