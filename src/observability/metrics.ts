/**
 * The Prometheus registry. Every name starts with `crowd_`; label sets are bounded
 * (route and target names come from the config, codes from a fixed set).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BatchHistogram } from './batch-histogram';

export interface LogGauges {
  first_offset: number;
  last_offset: number;
  durable_offset: number;
  bytes: number;
  pending_writes: number;
}

/** Per-target figures read at each scrape (see `delivery/consumer.ts`). */
export interface TargetFigures {
  name: string;
  /** Set for a peer's log delivered here (a takeover): the series get an `origin` label. */
  origin?: string;
  accepted: number;
  delivered: number;
  dead_letters: number;
  purged: number;
  lag: number;
  in_flight: number;
  retrying: number;
  /** Attempts by outcome. */
  attempts: Readonly<Record<string, number>>;
}

/** The labels of one target's series: `target`, and `origin` for a taken-over log. */
function seriesOf(f: TargetFigures): { target: string; origin?: string } {
  return f.origin === undefined ? { target: f.name } : { target: f.name, origin: f.origin };
}

export class Metrics {
  readonly registry = new Registry();
  readonly ingestRequests: Counter<'route' | 'code'>;
  readonly appendSeconds: BatchHistogram;
  readonly commitBatchSize: Histogram;
  readonly commitSeconds: Histogram;
  readonly retentionRemoved: Counter;
  readonly deliverySeconds: BatchHistogram;
  private readonly ingestChildren = new Map<string, { inc(): void }>();

  constructor(sources: { log: () => LogGauges | null; targets: () => TargetFigures[]; maxBytes: number }) {
    const registry = this.registry;
    collectDefaultMetrics({ register: registry, prefix: 'crowd_process_' });
    // prom-client names these gauges *_total, which Prometheus reserves for counters
    // (`promtool check metrics` rejects them); the handle and request counts stay without.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      registry.removeSingleMetric(`crowd_process_${name}`);
    }
    this.ingestRequests = new Counter({
      name: 'crowd_ingest_requests_total',
      help: 'Ingest requests answered, by route ("none" when no route matched) and status code.',
      labelNames: ['route', 'code'],
      registers: [registry],
    });
    this.appendSeconds = new BatchHistogram({
      name: 'crowd_log_append_seconds',
      help: 'Per request: time from the first append of its write transaction to that transaction\'s flush (fdatasync done); an upper bound for each request in it.',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    });
    this.commitBatchSize = new Histogram({
      name: 'crowd_log_commit_batch_size',
      help: 'Requests per flushed write transaction (group commit).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096],
      registers: [registry],
    });
    this.commitSeconds = new Histogram({
      name: 'crowd_log_commit_seconds',
      help: 'Time from the first append of a write transaction to its flush.',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    });
    this.retentionRemoved = new Counter({
      name: 'crowd_log_retention_removed_total',
      help: 'Entries removed by retention.',
      registers: [registry],
    });
    const logGauge = (name: string, help: string, pick: (g: LogGauges) => number) =>
      new Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          const g = sources.log();
          if (g) this.set(pick(g));
        },
      });
    logGauge('crowd_log_first_offset', 'Lowest offset still in the log (0 when empty).', (g) => g.first_offset);
    logGauge('crowd_log_last_offset', 'Highest offset appended.', (g) => g.last_offset);
    logGauge('crowd_log_durable_offset', 'Highest offset flushed; readers stop here.', (g) => g.durable_offset);
    logGauge('crowd_log_bytes', 'Bytes of envelopes held in the log.', (g) => g.bytes);
    logGauge('crowd_log_pending_writes', 'Appends waiting for their flush.', (g) => g.pending_writes);
    new Gauge({ name: 'crowd_log_max_bytes', help: 'Configured log.max_bytes.', registers: [registry] }).set(sources.maxBytes);
    new Counter({
      name: 'crowd_delivery_attempts_total',
      help: 'Delivery attempts by target and outcome: delivered (2xx), retry (retryable status), error (no response), timeout, dead (dead-lettered), paused (401/403).',
      labelNames: ['target', 'outcome', 'origin'],
      registers: [registry],
      collect() {
        this.reset();
        for (const f of sources.targets()) for (const [outcome, n] of Object.entries(f.attempts)) if (n > 0) this.labels({ ...seriesOf(f), outcome }).inc(n);
      },
    });
    this.deliverySeconds = new BatchHistogram({
      name: 'crowd_delivery_seconds',
      help: 'Duration of delivery attempts (request sent to response headers and body read).',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
    // Read from the consumers at each scrape, all in one synchronous pass: for every target,
    // accepted = delivered + dead_letters + purged + lag holds in every scrape.
    // A taken-over log's series carry `origin`; the node's own log's series do not (so
    // dashboards and alerts written for one node keep matching): sum by (target) is the total.
    const perTarget = (kind: 'gauge' | 'counter', name: string, help: string, pick: (f: TargetFigures) => number) => {
      const collect = function (this: Gauge<'target' | 'origin'> | Counter<'target' | 'origin'>) {
        this.reset();
        for (const f of sources.targets()) {
          if (this instanceof Counter) this.labels(seriesOf(f)).inc(pick(f));
          else this.labels(seriesOf(f)).inc(pick(f));
        }
      };
      if (kind === 'gauge') new Gauge({ name, help, labelNames: ['target', 'origin'], registers: [registry], collect });
      else new Counter({ name, help, labelNames: ['target', 'origin'], registers: [registry], collect });
    };
    perTarget('counter', 'crowd_accepted_total', 'Requests acknowledged for the target (its routes), plus the backlog found at start.', (f) => f.accepted);
    perTarget('counter', 'crowd_delivered_total', 'Requests the target answered with 2xx.', (f) => f.delivered);
    perTarget('gauge', 'crowd_dead_letters', 'Requests in the target\'s dead-letter store.', (f) => f.dead_letters);
    perTarget('counter', 'crowd_dead_letters_purged_total', 'Dead letters purged by an operator.', (f) => f.purged);
    perTarget('gauge', 'crowd_consumer_lag_messages', 'Requests for the target neither delivered nor dead-lettered yet (including retrying ones).', (f) => f.lag);
    perTarget('gauge', 'crowd_delivery_in_flight', 'Delivery requests in flight.', (f) => f.in_flight);
    perTarget('gauge', 'crowd_delivery_retrying', 'Requests waiting for another attempt.', (f) => f.retrying);
  }

  /** Records attempt durations of one target (seconds); `origin` for a taken-over log. */
  deliverySecondsOf(target: string, origin?: string): { observe(seconds: number): void } {
    return this.deliverySeconds.series(origin === undefined ? { target } : { target, origin });
  }

  ingest(route: string, code: number): void {
    this.ingestCounter(route, code).inc();
  }

  /** The counter of one (route, code) pair, for callers that count on a hot path. */
  ingestCounter(route: string, code: number): { inc(): void } {
    const key = `${route}\u0000${code}`;
    let child = this.ingestChildren.get(key);
    if (!child) {
      child = this.ingestRequests.labels(route, String(code));
      this.ingestChildren.set(key, child);
    }
    return child;
  }
}
