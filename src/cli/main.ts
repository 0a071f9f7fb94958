/**
 * The `crowd` command line: start, check, status, tail, dlq, replay. Exit codes: 0 success, 1 runtime
 * failure, 2 configuration error (one `crowd: config error: ...` line per problem).
 */
import { Command, Option } from 'commander';
import { ConfigError, displayConfig, loadConfig, type LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { VERSION } from '../version';
import { startCommand } from './start';
import { statusCommand } from './status';
import { tailCommand } from './tail';
import { dlqList, dlqPurge, dlqReplay, replay } from './delivery';

export const EXIT_RUNTIME = 1;
export const EXIT_CONFIG = 2;

/** Loads the config or prints every problem and exits 2. */
export function configOrExit(file: string | undefined): LoadedConfig {
  try {
    return loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
}

export function main(argv: string[]): void {
  const program = new Command();
  program
    .name('crowd')
    .description('Durable HTTP ingest proxy: every request is fsynced to a local log before it is acknowledged.')
    .version(VERSION, '-V, --version')
    .showHelpAfterError();
  const configOption = () => new Option('-c, --config <file>', 'config file (.toml or .json); else $CROWD_CONFIG, else ./crowd.toml, else built-in defaults');

  program
    .command('start')
    .description('run crowd in the foreground; JSON log lines on stdout')
    .addOption(configOption())
    .action((o: { config?: string }) => startCommand(configOrExit(o.config)));

  program
    .command('check')
    .description('validate the config and print it resolved')
    .addOption(configOption())
    .action((o: { config?: string }) => {
      const { file, config } = configOrExit(o.config);
      process.stdout.write(`# ${file}: OK\n${JSON.stringify(displayConfig(config), null, 2)}\n`);
    });

  program
    .command('status')
    .description("show the node's log offsets, targets and peers (reads the admin API)")
    .addOption(configOption())
    .option('--json', 'print the raw JSON of GET /status')
    .action((o: { config?: string; json?: boolean }) => statusCommand(configOrExit(o.config), o.json === true));

  program
    .command('tail')
    .description('print log entries as JSON lines (also while crowd runs)')
    .addOption(configOption())
    .option('--from <offset>', 'first offset to print', parseOffset)
    .option('-n <count>', 'print at most this many entries (without --from: the last ones)', parseOffset)
    .option('-f, --follow', 'keep printing new entries as they are written')
    .option('--replica <origin>', "print this node's replica of the peer ORIGIN's log (its node_id) instead of the local log")
    .option('--incarnation <id>', 'with --replica: the replica of this incarnation of the origin log (default: the newest held)')
    .action((o: { config?: string; from?: number; n?: number; follow?: boolean; replica?: string; incarnation?: string }) => tailCommand(configOrExit(o.config), o));

  const dlq = program.command('dlq').description("a target's dead letters (through the admin API of the running node)");
  const targetOption = () => new Option('-t, --target <name>', 'target name').makeOptionMandatory();
  const offsetsOption = () => new Option('--offset <offsets>', 'only these offsets (comma-separated); default: all, up to 10000 per call').argParser(parseOffsets);
  dlq
    .command('list')
    .description('print dead letters as JSON lines, oldest first')
    .addOption(configOption())
    .addOption(targetOption())
    .option('--after <offset>', 'only dead letters with a higher offset', parseOffset)
    .option('-n, --limit <count>', 'at most this many (default 100, max 10000)', parseOffset)
    .option('--origin <node_id>', "dead letters this node got while delivering that peer's log (a takeover)")
    .option('--incarnation <id>', 'with --origin: that log of the peer (default: the latest held here)')
    .action((o: { config?: string; target: string; after?: number; limit?: number; origin?: string; incarnation?: string }) => dlqList(configOrExit(o.config), o));
  dlq
    .command('replay')
    .description('send dead letters to the target again (they keep their id and attempt count)')
    .addOption(configOption())
    .addOption(targetOption())
    .addOption(offsetsOption())
    .action((o: { config?: string; target: string; offset?: number[] }) => dlqReplay(configOrExit(o.config), o));
  dlq
    .command('purge')
    .description('delete dead letters for good')
    .addOption(configOption())
    .addOption(targetOption())
    .addOption(offsetsOption())
    .action((o: { config?: string; target: string; offset?: number[] }) => dlqPurge(configOrExit(o.config), o));

  program
    .command('replay')
    .description("rewind a target: send again every entry from an offset or from a time ago (effective at once, no restart)")
    .addOption(configOption())
    .addOption(targetOption())
    .addOption(new Option('--from <offset>', 'first offset to send again').argParser(parseOffset).conflicts('since'))
    .addOption(new Option('--since <duration>', 'send again what arrived in the last DURATION, e.g. 2h'))
    .action((o: { config?: string; target: string; from?: number; since?: string }) => {
      if (o.from === undefined && o.since === undefined) throw new Error('replay needs --from OFFSET or --since DURATION');
      return replay(configOrExit(o.config), o);
    });

  program.parseAsync(argv).catch((err: unknown) => {
    const code = err instanceof CrowdError ? ` [${err.code}]` : '';
    process.stderr.write(`crowd: error${code}: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(EXIT_RUNTIME);
  });
}

function parseOffsets(value: string): number[] {
  return value.split(',').map((v) => {
    const n = parseOffset(v.trim());
    if (n < 1) throw new Error(`"${v}" is not an offset (whole number >= 1)`);
    return n;
  });
}

function parseOffset(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`"${value}" is not a whole number >= 0`);
  return n;
}
