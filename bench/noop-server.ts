/**
 * The ceiling for the ingest benchmark: the same native uWebSockets.js binary crowd runs on,
 * doing nothing but reading each request's body and answering `{"status":"OK"}`. Whatever
 * crowd does beyond that (routing, envelope encoding, the LMDB commit and its fsync) shows
 * up as the gap between the two.
 *
 * Run as `node dist/bench/noop-server.js`: listens on 127.0.0.1, port 0 (the kernel picks a
 * free one), and prints the chosen port as one line on stdout.
 */
import { listen, loadNativeUws } from '../src/http/uws';

const OK_BODY = '{"status":"OK"}';

async function main(): Promise<void> {
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
    });
  });
  const { port } = await listen(uws, app, '127.0.0.1', 0);
  process.stdout.write(`${port}\n`);
  // The benchmark holds our stdin open; when it goes away (even killed with SIGKILL), so do we,
  // instead of lingering on the port.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

main().catch((err: Error) => {
  process.stderr.write(`noop-server: ${err.message}\n`);
  process.exit(1);
});
