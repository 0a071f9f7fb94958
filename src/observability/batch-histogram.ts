/**
 * A Prometheus histogram that records one value for many events at once. Every request of
 * a write transaction waited the same commit, so the log observes (latency, count) once per
 * transaction instead of once per request: the exported distribution is still per request.
 * Registered into a prom-client Registry like any other metric.
 *
 * Also the cheap histogram of hot paths (a delivery attempt): `series(labels)` hands out a
 * recorder once, and each observation is a few array updates, no label lookup.
 */
import type { Registry } from 'prom-client';

/** The observations of one label set. */
export class Series {
  private readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Array(bounds.length).fill(0);
  }

  /** Records `times` observations of `value`. */
  observeMany(value: number, times: number): void {
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]!) {
        this.counts[i]! += times;
        break;
      }
    }
    this.sum += value * times;
    this.count += times;
  }

  observe(value: number): void {
    this.observeMany(value, 1);
  }

  cumulative(i: number): number {
    let c = 0;
    for (let j = 0; j <= i; j++) c += this.counts[j]!;
    return c;
  }
}

type Value = { labels: Record<string, string | number>; value: number; metricName: string };

export class BatchHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly bounds: readonly number[];
  private readonly all = new Map<string, Series>();
  private readonly unlabeled: Series;

  constructor(opts: { name: string; help: string; buckets: readonly number[]; registers: Registry[] }) {
    this.name = opts.name;
    this.help = opts.help;
    this.bounds = [...opts.buckets].sort((a, b) => a - b);
    this.unlabeled = new Series({}, this.bounds);
    for (const r of opts.registers) r.registerMetric(this as never);
  }

  /** Records `times` observations of `value` (without labels). */
  observeMany(value: number, times: number): void {
    this.unlabeled.observeMany(value, times);
  }

  /** The recorder of one label set (created on first use, then kept). */
  series(labels: Record<string, string>): Series {
    const key = JSON.stringify(labels);
    let s = this.all.get(key);
    if (!s) {
      s = new Series({ ...labels }, this.bounds);
      this.all.set(key, s);
    }
    return s;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: Value[] } {
    const values: Value[] = [];
    const list = this.all.size > 0 ? [...this.all.values()] : [this.unlabeled];
    for (const s of list) {
      for (let i = 0; i < this.bounds.length; i++) values.push({ labels: { ...s.labels, le: this.bounds[i]! }, value: s.cumulative(i), metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels, le: '+Inf' }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
