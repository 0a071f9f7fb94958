/** What a scenario of the benchmark suite gets and gives back. */

export interface ScenarioContext {
  /** `make bench-full`: longer runs and larger backlogs. */
  readonly full: boolean;
  /** A temp directory for this scenario (removed at the end). */
  readonly dir: string;
  /** Figures of scenarios that ran before in this suite run (e.g. latency uses ingest's max rate). */
  readonly earlier: ReadonlyMap<string, ScenarioResult>;
}

/** One goal from the issue and how this run measured against it. */
export interface Goal {
  readonly name: string;
  /** e.g. ">= 0.75 x ceiling". */
  readonly target: string;
  readonly measured: string;
  readonly met: boolean;
  /** What limits it, when not met. */
  readonly note?: string;
}

export interface ChartSeries {
  readonly name: string;
  readonly points: readonly { readonly x: string; readonly y: number }[];
}

export interface Chart {
  readonly title: string;
  /** Axis label of the values, e.g. "req/s" or "ms". */
  readonly unit: string;
  /** Grouped bars: one group per x, one bar per series. */
  readonly series: readonly ChartSeries[];
}

export interface ScenarioResult {
  readonly scenario: string;
  readonly title: string;
  /** One sentence: what was measured and how. */
  readonly method: string;
  readonly params: Record<string, unknown>;
  /** The table printed and written to the summary: a header row, then rows. */
  readonly table: readonly (readonly string[])[];
  /** More tables after it, each with a title (a header row, then rows). */
  readonly tables?: readonly { readonly title: string; readonly table: readonly (readonly string[])[] }[];
  readonly goals: readonly Goal[];
  readonly charts: readonly Chart[];
  /** Everything measured, for the JSON file. */
  readonly data: unknown;
  /** Figures later scenarios may use. */
  readonly shared?: Record<string, number>;
}

export interface Scenario {
  readonly name: string;
  readonly describe: string;
  run(ctx: ScenarioContext): Promise<ScenarioResult>;
}
