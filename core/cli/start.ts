/** `bolt-core start`: runs a core in the foreground until SIGINT or SIGTERM. */
import { ROLES } from '../../plugin-sdk/src/schemas/manifest.ts';
import { Core } from '../runtime.ts';
import { createLogger } from '../log.ts';
import { usageError, type Command } from './command.ts';

export const startCommand: Command = {
  usage: 'bolt-core start [--role server|sink|client] [--data DIR] [--plugins DIR]... [--config FILE] [--log-level LEVEL]',
  summary: 'run a Bolt process in the foreground (no --role: server and sink together)',
  options: {
    role: { type: 'string' },
    data: { type: 'string' },
    plugins: { type: 'string', multiple: true },
    config: { type: 'string' },
    'log-level': { type: 'string' },
  },
  async run({ values }) {
    const role = values.role as string | undefined;
    if (role !== undefined && !(ROLES as readonly string[]).includes(role)) {
      throw usageError(`--role must be one of ${ROLES.join(', ')} (got '${role}')`, startCommand);
    }
    const roles = role ? [role] : ['server', 'sink'];
    const log = createLogger((values['log-level'] as string | undefined) ?? process.env.BOLT_LOG_LEVEL ?? 'info');
    const core = await Core.start({
      roles,
      ...(values.plugins ? { pluginDirs: values.plugins as string[] } : {}),
      ...(values.data ? { dataDir: values.data as string } : {}),
      ...(values.config ? { configFile: values.config as string } : {}),
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
