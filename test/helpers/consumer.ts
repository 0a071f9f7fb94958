/**
 * An in-process consumer against a real Log in a temp dir, with a hand-driven clock and a
 * sink whose attempts the test answers one by one. Commits run as the delivery manager runs
 * them (takeCommit, one transaction, committed), but only when the test asks.
 */
import { join } from 'node:path';
import pino from 'pino';
import type { TargetConfig } from '../../src/config/schema';
import { Consumer, type ConsumerDeps } from '../../src/delivery/consumer';
import type { AttemptResult, Sink } from '../../src/delivery/sinks/sink';
import type { Envelope } from '../../src/log/codec';
import { Log } from '../../src/log/log';
import { tempDir } from './crowd';

export interface Call {
  readonly env: Envelope;
  readonly attempt: number;
  answered: boolean;
  /** The status it was answered with (undefined while open). */
  status?: number | null;
  answer(status: number | null, extra?: Partial<AttemptResult>): void;
}

export class FakeSink implements Sink {
  readonly calls: Call[] = [];

  send(env: Envelope, attempt: number): Promise<AttemptResult> {
    return new Promise((res) => {
      const call: Call = {
        env,
        attempt,
        answered: false,
        answer: (status, extra = {}) => {
          if (call.answered) throw new Error(`offset ${env.offset} attempt ${attempt} answered twice`);
          call.answered = true;
          call.status = status;
          res({ status, retryAfter: null, error: status !== null && status < 300 ? '' : `upstream answered ${status}`, timedOut: false, unsendable: false, ...extra });
        },
      };
      this.calls.push(call);
    });
  }

  /** Attempts not answered yet. */
  open(): Call[] {
    return this.calls.filter((c) => !c.answered);
  }

  /** Offsets of the calls, in the order they were sent. */
  offsets(): number[] {
    return this.calls.map((c) => c.env.offset);
  }

  async close(): Promise<void> {}
}

export function target(over: Partial<TargetConfig> = {}): TargetConfig {
  return {
    name: 'api',
    type: 'http',
    url: 'http://127.0.0.1:9',
    concurrency: 4,
    rate: 0,
    timeout: 1000,
    ordered: false,
    retry: { base: 100, max: 1000, max_age: 3_600_000, permanent: [400, 404, 405, 410, 413, 415, 422] },
    max_read_ahead_bytes: 16 * 1024 * 1024,
    max_lag_bytes: 0,
    ...over,
  } as TargetConfig;
}

/** Lets promise callbacks and setImmediate work run. */
export async function settle(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

export class Harness {
  clock = 1_000_000;
  readonly sink = new FakeSink();
  readonly consumer: Consumer;
  readonly errors: string[] = [];
  commitsAsked = 0;

  private constructor(
    readonly log: Log,
    t: TargetConfig,
    extra: Partial<ConsumerDeps>,
  ) {
    const logger = pino({ level: 'warn' }, { write: (line: string) => this.errors.push(line) });
    this.consumer = new Consumer({
      target: t,
      routes: new Set(['leads']),
      log,
      sink: this.sink,
      logger,
      events: { attemptSeconds: () => undefined, commitSoon: () => void this.commitsAsked++ },
      now: () => this.clock,
      random: () => 0.5,
      ...extra,
    });
  }

  static async open(t: TargetConfig = target(), extra: Partial<ConsumerDeps> = {}, dir = join(tempDir('crowd-consumer-'), 'log')): Promise<Harness> {
    const log = await Log.open({ dir, maxPendingWrites: 100_000, maxBytes: 8 * 1024 ** 3, retentionMs: 0, consumers: [t.name] });
    return new Harness(log, t, extra);
  }

  /** Appends `n` requests of route `leads` (bodies `body-<offset>`, or `bytes` long) and waits until they are durable. */
  async append(n: number, opts: { route?: string; bytes?: number } = {}): Promise<number[]> {
    const offsets: number[] = [];
    const done: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      done.push(
        new Promise((res, rej) => {
          const o = this.log.append(
            {
              id: `id-${this.log.stats().last_offset + 1}-${i}`,
              received_at: this.clock,
              route: opts.route ?? 'leads',
              method: 'POST',
              path: '/leads',
              query: '',
              headerList: ['content-type', 'text/plain'],
              remote: '127.0.0.1',
              body: opts.bytes ? Buffer.alloc(opts.bytes, 7) : Buffer.from(`body-${i}`),
            },
            { appended: (err) => (err ? rej(err) : res()) },
          );
          offsets.push(o);
        }),
      );
      if (!opts.route || opts.route === 'leads') this.consumer.acceptedOne();
    }
    await Promise.all(done);
    return offsets;
  }

  /** init + start, as the delivery manager does (a new target starts at offset 0 here, not after the log). */
  async start(): Promise<void> {
    if (!this.log.delivery.hasOffset(this.consumer.name)) await this.log.delivery.setOffset(this.consumer.name, 0);
    this.consumer.init();
    await this.consumer.start({ backlogFrom: 1, backlogThrough: this.log.durableOffset() });
    await settle();
  }

  /** One delivery commit, as the manager writes it. */
  async commit(): Promise<void> {
    const p = this.consumer.takeCommit();
    if (!p) return;
    await this.log.delivery.commit([p.commit]);
    this.consumer.committed(p);
    await settle();
  }

  /**
   * A rewind whose offset is stored directly. `between` runs before its serialised part, as the
   * manager's commit chain would (e.g. finishing a commit that was being written).
   */
  rewind(from: number, between: () => Promise<void> = async () => undefined): Promise<{ from: number; previous: number; resent: number }> {
    return this.consumer.rewind(
      from,
      async (op) => {
        await between();
        return op();
      },
      (o) => this.log.delivery.setOffset(this.consumer.name, o),
    );
  }

  /** `crowd dlq replay`: writes pending changes first, moves every dead letter back, tells the consumer. */
  async replayDead(): Promise<number> {
    await this.commit();
    const moved = await this.log.delivery.replayDead(this.consumer.name, null, 10_000, this.clock);
    this.consumer.replayed(moved);
    await settle();
    return moved.length;
  }

  /** Answers every open attempt with `status` (repeatedly, until none is open, at most `rounds` times). */
  async answerAll(status: number, rounds = 100): Promise<void> {
    for (let i = 0; i < rounds; i++) {
      const open = this.sink.open();
      if (open.length === 0) return;
      for (const c of open) c.answer(status);
      await settle();
    }
    throw new Error(`still ${this.sink.open().length} attempts open after ${rounds} rounds`);
  }

  /** Advances the clock and lets the consumer act on it. */
  async tick(ms: number): Promise<void> {
    this.clock += ms;
    this.consumer.pump();
    await settle();
  }

  /** accepted = delivered + dead + purged + lag, lag >= 0. */
  figures(): { accepted: number; delivered: number; dead: number; purged: number; lag: number } {
    const s = this.consumer.status();
    return { accepted: s.accepted, delivered: s.delivered, dead: s.dead_letters, purged: s.purged, lag: s.lag };
  }

  /** How many 2xx answers each offset got. */
  okCounts(): Map<number, number> {
    const n = new Map<number, number>();
    for (const c of this.sink.calls) if (typeof c.status === 'number' && c.status >= 200 && c.status < 300) n.set(c.env.offset, (n.get(c.env.offset) ?? 0) + 1);
    return n;
  }

  /** Offsets that got more than one 2xx. */
  deliveredTwice(): number[] {
    return [...this.okCounts()].filter(([, k]) => k > 1).map(([o]) => o);
  }

  async close(): Promise<void> {
    await this.consumer.stop(0);
    await this.log.close();
  }
}
