/** `bolt-core`: dispatches to a subcommand; exit 0 success, 1 a task failed, 2 bad input or usage. */
import { readFileSync } from 'node:fs';
import { toErrorInfo } from '../../plugin-sdk/src/errors.ts';
import { parseCommandArgs, type Command } from './command.ts';

/** Each command's module is loaded only when it runs (or for the help), so a quick command stays quick. */
const commands = new Map<string, () => Promise<Command>>([
  ['start', async () => (await import('./start.ts')).startCommand],
  ['plugins', async () => (await import('./plugins.ts')).pluginsCommand],
  ['hosts', async () => (await import('./hosts.ts')).hostsCommand],
  ['keys', async () => (await import('./keys.ts')).keysCommand],
  ['validate', async () => (await import('./validate.ts')).validateCommand],
  ['run', async () => (await import('./run.ts')).runCommand],
  ['runs', async () => (await import('./runs.ts')).runsCommand],
  ['show', async () => (await import('./runs.ts')).showCommand],
  ['cancel', async () => (await import('./runs.ts')).cancelCommand],
  ['report', async () => (await import('./report.ts')).reportCommand],
  ['demo', async () => (await import('./demo.ts')).demoCommand],
]);

/** Errors that mean "bad input or usage": exit 2. */
const USAGE_CODES = new Set(['BOLT_ERR_CLI_USAGE', 'BOLT_ERR_CLI_NOT_RUNNING', 'BOLT_ERR_CONFIG_INVALID', 'BOLT_ERR_WIRE_KEY_UNKNOWN', 'BOLT_ERR_WIRE_KEY_AMBIGUOUS', 'BOLT_ERR_BUS_NO_PROVIDER']);

async function help(): Promise<string> {
  const width = Math.max(...[...commands.keys()].map((k) => k.length));
  const loaded = await Promise.all([...commands].map(async ([name, load]) => [name, await load()] as const));
  return [
    'usage: bolt-core <command> [options]',
    '',
    'commands:',
    ...loaded.map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    "'bolt-core <command> --help' shows a command's options.",
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(`${await help()}\n`);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === 'version') {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return 0;
  }
  const load = commands.get(name);
  if (!load) {
    process.stderr.write(`bolt-core: BOLT_ERR_CLI_USAGE: unknown command '${name}'\n\n${await help()}\n`);
    return 2;
  }
  const command = await load();
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
