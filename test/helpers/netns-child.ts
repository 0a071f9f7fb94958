/**
 * Child process for the NetLab cleanup test: builds a lab of two namespaces whose teardown
 * never runs (as if the test runner died first), starts a process inside one of them,
 * prints `{"id":..,"inner":<pid>}`, then:
 *   throw   throws an uncaught exception (the 'exit' handler must clean up)
 *   wait    waits to be signalled (SIGTERM: the signal handler; SIGKILL: the next sweep)
 */
import { NetLab, spawnReady } from './netns';

async function main(): Promise<void> {
  const mode = process.argv[2];
  const lab = await NetLab.create({ teardown: () => undefined }, ['a', 'b']);
  // Ready once it printed: by then it runs inside the namespace.
  const { proc: inner } = await spawnReady(lab.exec('a', [process.execPath, '-e', "console.log('up'); setInterval(() => {}, 1000)"]), /^up$/);
  process.stdout.write(`${JSON.stringify({ id: lab.id, inner: inner.pid })}\n`);
  if (mode === 'throw') throw new Error('thrown on purpose by netns-child');
  setInterval(() => undefined, 1000);
}

main().catch((err) => {
  // Rethrown outside the promise: an uncaught exception, as a crashing test would have.
  setImmediate(() => {
    throw err;
  });
});
