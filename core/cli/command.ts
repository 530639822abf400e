/** The shape every `bolt-core` subcommand has, and the helpers they share. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BoltError } from '../../plugin-sdk/src/errors.ts';

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  usage: string;
  summary: string;
  options: Options;
  /** Returns the exit code: 0 success, 1 a task failed, 2 bad input or usage. */
  run(args: { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] }): Promise<number>;
}

/** Parses argv for one command; unknown flags and missing values are usage errors (exit 2). */
export function parseCommandArgs(command: Command, argv: string[]): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: command.options, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | string[] | undefined>, positionals };
  } catch (err) {
    throw new BoltError('BOLT_ERR_CLI_USAGE', `${(err as Error).message}\nusage: ${command.usage}`, { cause: err });
  }
}

export function usageError(message: string, command?: Command): BoltError {
  return new BoltError('BOLT_ERR_CLI_USAGE', command ? `${message}\nusage: ${command.usage}` : message);
}

/** Repeated `--FLAG KEY=VALUE` options (labels, vars) as a map; a pair without `=` is a usage error. */
export function parsePairs(pairs: string[], flag: string, command: Command): Record<string, string> {
  const map = new Map<string, string>();
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq < 1) throw usageError(`--${flag} must be KEY=VALUE (got '${pair}')`, command);
    map.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return Object.fromEntries(map);
}
