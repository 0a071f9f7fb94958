/**
 * The load generator for the NATS JetStream baseline: one NATS connection, `--in-flight N`
 * JetStream publishes outstanding at all times (N workers, each one `await js.publish()` after
 * the other; js.publish resolves only on the stream's PubAck, i.e. once the server stored the
 * message). Warm-up first, then the measured window; a publish counts when its PubAck arrives
 * inside the window, and its latency (publish call to PubAck) goes into an HDR histogram.
 *
 *   node dist/bench/baselines/nats-publisher.js --port P --in-flight N --seconds S
 *        [--warmup S] [--body TEXT] [--subject bench.ingest] [--stream BENCH]
 *
 * Creates the stream (file storage, one replica, subjects `bench.>`) if it does not exist,
 * prints progress on stderr and one JSON line on stdout at the end, then exits. Exits at once
 * (code 2) if its stdin closes before that: the benchmark holds it open.
 */
import { build } from 'hdr-histogram-js';
import { connect, StorageType, type NatsConnection } from 'nats';
import { parseArgs } from 'node:util';

/** How long in-flight publishes may take to finish after the window closed. */
const DRAIN_TIMEOUT_MS = 10_000;
const PUBLISH_TIMEOUT_MS = 5_000;
const ERROR_SAMPLES = 5;

function int(name: string, text: string | undefined, min: number): number {
  const n = Number(text);
  if (text === undefined || !Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number >= ${min}, got "${text}"`);
  return n;
}

function num(name: string, text: string | undefined, min: number): number {
  const n = Number(text);
  if (text === undefined || !Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got "${text}"`);
  return n;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      'in-flight': { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string', default: '0' },
      body: { type: 'string', default: '{"email":"lead@example.com","name":"Ada","campaign":"fall-26"}' },
      subject: { type: 'string', default: 'bench.ingest' },
      stream: { type: 'string', default: 'BENCH' },
    },
  });
  const port = int('port', values.port, 1);
  const inFlight = int('in-flight', values['in-flight'], 1);
  const seconds = num('seconds', values.seconds, 0.1);
  const warmup = num('warmup', values.warmup, 0);
  const payload = new TextEncoder().encode(values.body);
  const subject = values.subject!;

  process.stdin.on('end', () => process.exit(2));
  process.stdin.resume();

  const nc: NatsConnection = await connect({ servers: `127.0.0.1:${port}`, timeout: 5_000, reconnect: false });
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.info(values.stream!);
  } catch {
    await jsm.streams.add({ name: values.stream!, subjects: ['bench.>'], storage: StorageType.File, num_replicas: 1 });
  }
  const js = nc.jetstream({ timeout: PUBLISH_TIMEOUT_MS });

  // Latencies in microseconds; the histogram resizes itself past its initial range.
  const histogram = build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  let measuring = false;
  let stopping = false;
  let acked = 0;
  let ackedTotal = 0;
  let errors = 0;
  const errorSamples: string[] = [];

  const worker = async (): Promise<void> => {
    while (!stopping) {
      const started = process.hrtime.bigint();
      try {
        await js.publish(subject, payload);
        ackedTotal++;
        // A PubAck that arrives after the window closed is not counted (as wrk does).
        if (measuring && !stopping) {
          acked++;
          histogram.recordValue(Math.max(1, Math.round(Number(process.hrtime.bigint() - started) / 1000)));
        }
      } catch (err) {
        if (measuring && !stopping) errors++;
        if (errorSamples.length < ERROR_SAMPLES) errorSamples.push((err as Error).message);
        // Don't spin on a dead connection.
        if (nc.isClosed()) return;
      }
    }
  };

  if (warmup > 0) process.stderr.write(`nats-publisher: ${inFlight} in flight, ${warmup} s warm-up\n`);
  const workers = Array.from({ length: inFlight }, () => worker());
  await sleep(warmup * 1000);
  process.stderr.write(`nats-publisher: measuring ${seconds} s\n`);
  measuring = true;
  const t0 = process.hrtime.bigint();
  await sleep(seconds * 1000);
  stopping = true;
  const measuredS = Number(process.hrtime.bigint() - t0) / 1e9;

  const drained = await Promise.race([Promise.all(workers).then(() => true), sleep(DRAIN_TIMEOUT_MS).then(() => false)]);
  const info = await jsm.streams.info(values.stream!);
  const result = {
    server_version: nc.info?.version ?? null,
    in_flight: inFlight,
    nats_connections: 1,
    warmup_s: warmup,
    measured_s: measuredS,
    acked,
    acked_total: ackedTotal,
    errors,
    error_samples: errorSamples,
    drained,
    latency_us: {
      p50: histogram.getValueAtPercentile(50),
      p90: histogram.getValueAtPercentile(90),
      p99: histogram.getValueAtPercentile(99),
      p999: histogram.getValueAtPercentile(99.9),
      max: histogram.maxValue,
      mean: histogram.mean,
    },
    stream: {
      name: info.config.name,
      storage: info.config.storage,
      subjects: info.config.subjects,
      messages: info.state.messages,
      bytes: info.state.bytes,
    },
  };
  await nc.close();
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((err: Error) => {
  process.stderr.write(`nats-publisher: ${err.message}\n`);
  process.exit(1);
});
