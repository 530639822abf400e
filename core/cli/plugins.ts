/** `bolt-core plugins`: the plugin table of a running core, and operator restarts. */
import type { PluginStatus } from '../supervisor/index.ts';
import { adminRequest } from './admin-client.ts';
import { usageError, type Command } from './command.ts';
import { ago, formatTable } from './table.ts';

export const pluginsCommand: Command = {
  usage: 'bolt-core plugins [--data DIR] [--json] | bolt-core plugins restart NAME [--data DIR] [--json]',
  summary: 'list the plugins of the running core (state, restarts, last error), or restart one',
  options: {
    data: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    const dataDir = (values.data as string | undefined) ?? '.bolt';
    if (positionals[0] === 'restart') {
      const name = positionals[1];
      if (!name || positionals.length > 2) throw usageError('plugins restart takes one plugin name', pluginsCommand);
      const { plugin } = await adminRequest<{ plugin: PluginStatus }>(dataDir, 'POST', `/api/plugins/${encodeURIComponent(name)}/restart`);
      process.stdout.write(values.json ? `${JSON.stringify(plugin)}\n` : `${plugin.name}: ${plugin.state}\n`);
      return 0;
    }
    if (positionals.length > 0) throw usageError(`unknown argument '${positionals[0]}'`, pluginsCommand);
    const { plugins } = await adminRequest<{ plugins: PluginStatus[] }>(dataDir, 'GET', '/api/plugins');
    if (values.json) {
      process.stdout.write(`${JSON.stringify(plugins, null, 2)}\n`);
      return 0;
    }
    const rows = plugins.map((p) => [
      p.name, p.version ?? '-', p.kind ?? '-', p.isolation ?? '-', p.state, String(p.restarts), ago(p.since),
      p.lastError ? `${p.lastError.code}: ${p.lastError.message.split('\n')[0]}` : '',
    ]);
    process.stdout.write(`${formatTable(['NAME', 'VERSION', 'KIND', 'ISOLATION', 'STATE', 'RESTARTS', 'SINCE', 'LAST ERROR'], rows)}\n`);
    return 0;
  },
};
