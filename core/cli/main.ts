/** `bolt-core`: dispatches to a subcommand; exit 0 success, 1 a task failed, 2 bad input or usage. */
import { readFileSync } from 'node:fs';
import { toErrorInfo } from '../../plugin-sdk/src/errors.ts';
import { parseCommandArgs, type Command } from './command.ts';
import { demoCommand } from './demo.ts';
import { hostsCommand } from './hosts.ts';
import { keysCommand } from './keys.ts';
import { pluginsCommand } from './plugins.ts';
import { reportCommand } from './report.ts';
import { runCommand } from './run.ts';
import { cancelCommand, runsCommand, showCommand } from './runs.ts';
import { startCommand } from './start.ts';
import { validateCommand } from './validate.ts';

const commands = new Map<string, Command>([
  ['start', startCommand],
  ['plugins', pluginsCommand],
  ['hosts', hostsCommand],
  ['keys', keysCommand],
  ['validate', validateCommand],
  ['run', runCommand],
  ['runs', runsCommand],
  ['show', showCommand],
  ['cancel', cancelCommand],
  ['report', reportCommand],
  ['demo', demoCommand],
]);

/** Errors that mean "bad input or usage": exit 2. */
const USAGE_CODES = new Set(['BOLT_ERR_CLI_USAGE', 'BOLT_ERR_CLI_NOT_RUNNING', 'BOLT_ERR_CONFIG_INVALID', 'BOLT_ERR_WIRE_KEY_UNKNOWN', 'BOLT_ERR_WIRE_KEY_AMBIGUOUS', 'BOLT_ERR_BUS_NO_PROVIDER']);

function help(): string {
  const width = Math.max(...[...commands.keys()].map((k) => k.length));
  return [
    'usage: bolt-core <command> [options]',
    '',
    'commands:',
    ...[...commands].map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    "'bolt-core <command> --help' shows a command's options.",
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(`${help()}\n`);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === 'version') {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return 0;
  }
  const command = commands.get(name);
  if (!command) {
    process.stderr.write(`bolt-core: BOLT_ERR_CLI_USAGE: unknown command '${name}'\n\n${help()}\n`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`usage: ${command.usage}\n${command.summary}\n`);
    return 0;
  }
  try {
    return await command.run(parseCommandArgs(command, rest));
  } catch (err) {
    const info = toErrorInfo(err);
    process.stderr.write(`bolt-core ${name}: ${info.code}: ${info.message}\n`);
    return USAGE_CODES.has(info.code) || info.code.startsWith('BOLT_ERR_JOB_') ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
