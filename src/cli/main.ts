/**
 * The `crowd` command line: start, check, status, tail. Exit codes: 0 success, 1 runtime
 * failure, 2 configuration error (one `crowd: config error: ...` line per problem).
 */
import { Command, Option } from 'commander';
import { ConfigError, displayConfig, loadConfig, type LoadedConfig } from '../config/load';
import { CrowdError } from '../errors';
import { VERSION } from '../version';
import { startCommand } from './start';
import { statusCommand } from './status';
import { tailCommand } from './tail';

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
    .action((o: { config?: string; from?: number; n?: number; follow?: boolean }) => tailCommand(configOrExit(o.config), o));

  program.parseAsync(argv).catch((err: unknown) => {
    const code = err instanceof CrowdError ? ` [${err.code}]` : '';
    process.stderr.write(`crowd: error${code}: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(EXIT_RUNTIME);
  });
}

function parseOffset(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`"${value}" is not a whole number >= 0`);
  return n;
}
