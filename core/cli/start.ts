/** `bolt-core start`: runs a core in the foreground until SIGINT or SIGTERM. */
import { existsSync } from 'node:fs';
import { ROLES } from '../../plugin-sdk/src/schemas/manifest.ts';
import type { ProcessOptions } from '../../plugin-sdk/src/index.ts';
import { Core } from '../runtime.ts';
import { createLogger } from '../log.ts';
import { parsePairs, usageError, type Command } from './command.ts';

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9_./-]{0,63}$/;

type Values = Record<string, string | boolean | string[] | undefined>;

function port(values: Values, flag: string): number | undefined {
  const text = values[flag] as string | undefined;
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 65535) throw usageError(`--${flag} must be a port number between 1 and 65535 (got '${text}')`, startCommand);
  return n;
}

function file(values: Values, flag: string): string | undefined {
  const f = values[flag] as string | undefined;
  if (f !== undefined && !existsSync(f)) throw usageError(`--${flag}: no such file '${f}'`, startCommand);
  return f;
}

/** Turns the flags into the options every plugin sees as `ctx.options`; bad values are usage errors. */
function processOptions(roles: string[], values: Values): ProcessOptions {
  const labels = parsePairs((values.label as string[] | undefined) ?? [], 'label', startCommand);
  for (const [key, value] of Object.entries(labels)) {
    if (!LABEL_KEY.test(key) || value.length > 256) {
      throw usageError(`--label ${key}: keys are letters, digits, '_', '.', '/', '-' (at most 64), values at most 256 characters`, startCommand);
    }
  }
  const server = values.server as string | undefined;
  if (server !== undefined && !/^wss?:\/\/[^\s/]+/.test(server)) throw usageError(`--server must be a ws:// or wss:// URL (got '${server}')`, startCommand);
  const needsServer = roles.includes('client') || (roles.includes('sink') && !roles.includes('server'));
  if (needsServer && server === undefined) throw usageError(`--role ${roles.join('+')} needs --server ws://HOST:7700`, startCommand);
  const tlsCert = file(values, 'tls-cert');
  const tlsKey = file(values, 'tls-key');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) throw usageError('--tls-cert and --tls-key go together', startCommand);
  const skew = values['clock-skew-ms'] as string | undefined;
  if (skew !== undefined && !Number.isFinite(Number(skew))) throw usageError(`--clock-skew-ms must be a number (got '${skew}')`, startCommand);
  const options: ProcessOptions = {
    port: port(values, 'port'),
    sinkPort: port(values, 'sink-port'),
    listen: values.listen as string | undefined,
    server,
    name: values.name as string | undefined,
    labels,
    autoAccept: values['auto-accept'] === true,
    serverKey: values['server-key'] as string | undefined,
    tlsCert,
    tlsKey,
    tlsCa: file(values, 'tls-ca'),
    clockSkewMs: skew === undefined ? undefined : Number(skew),
  };
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as ProcessOptions;
}

export const startCommand: Command = {
  usage: [
    'bolt-core start [--role server|sink|client] [--data DIR] [--plugins DIR]... [--config FILE] [--log-level LEVEL]',
    '       [--port 7700] [--sink-port 7701] [--listen ADDR] [--auto-accept] [--tls-cert FILE --tls-key FILE]',
    '       [--server ws://HOST:7700] [--server-key KEY] [--tls-ca FILE] [--name NAME] [--label KEY=VALUE]...',
  ].join('\n'),
  summary: 'run a Bolt process in the foreground (no --role: server and sink together)',
  options: {
    role: { type: 'string' },
    data: { type: 'string' },
    plugins: { type: 'string', multiple: true },
    config: { type: 'string' },
    'log-level': { type: 'string' },
    port: { type: 'string' },
    'sink-port': { type: 'string' },
    listen: { type: 'string' },
    server: { type: 'string' },
    'server-key': { type: 'string' },
    name: { type: 'string' },
    label: { type: 'string', multiple: true },
    'auto-accept': { type: 'boolean' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-ca': { type: 'string' },
    'clock-skew-ms': { type: 'string' },
  },
  async run({ values }) {
    const role = values.role as string | undefined;
    if (role !== undefined && !(ROLES as readonly string[]).includes(role)) {
      throw usageError(`--role must be one of ${ROLES.join(', ')} (got '${role}')`, startCommand);
    }
    const roles = role ? [role] : ['server', 'sink'];
    const options = processOptions(roles, values);
    const log = createLogger((values['log-level'] as string | undefined) ?? process.env.BOLT_LOG_LEVEL ?? 'info');
    const core = await Core.start({
      roles,
      ...(values.plugins ? { pluginDirs: values.plugins as string[] } : {}),
      ...(values.data ? { dataDir: values.data as string } : {}),
      ...(values.config ? { configFile: values.config as string } : {}),
      options,
      log,
    });
    const plugins = core.plugins();
    const running = plugins.filter((p) => p.state === 'running').map((p) => p.name);
    const other = plugins.filter((p) => p.state !== 'running').map((p) => `${p.name} (${p.state}${p.lastError ? `: ${p.lastError.code}` : ''})`);
    log.info({ roles, running, other, admin: core.info.admin.url }, `bolt-core ${roles.join('+')} started: ${running.length} plugin(s) running${running.length ? `: ${running.join(', ')}` : ''}${other.length ? `; not running: ${other.join(', ')}` : ''}. 'bolt-core plugins' shows the table.`);
    await new Promise<void>((resolve) => {
      const shutdown = (signal: string) => {
        log.info({ signal }, 'shutting down');
        process.once(signal, () => process.exit(1));
        resolve();
      };
      process.once('SIGINT', () => shutdown('SIGINT'));
      process.once('SIGTERM', () => shutdown('SIGTERM'));
    });
    await core.stop();
    log.info('stopped');
    return 0;
  },
};
