/** `bolt-core hosts`: the hosts the running server knows, with their health state. */
import { serviceRequest } from './admin-client.ts';
import { parsePairs, usageError, type Command } from './command.ts';
import { ago, formatTable } from './table.ts';

/** One row of `health.hosts` (served by the health-monitor plugin); only what the table shows is typed. */
interface HostRow {
  id: string;
  name: string;
  address?: string;
  labels?: Record<string, string>;
  state: string;
  since: string | number;
  clockOffsetMs?: number | null;
  lastHeartbeatAt?: string | number | null;
}

export const hostsCommand: Command = {
  usage: 'bolt-core hosts [--data DIR] [--label KEY=VALUE]... [--json]',
  summary: 'list the hosts known to the running server: name, address, labels, state, clock offset, last heartbeat',
  options: {
    data: { type: 'string' },
    label: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw usageError(`unknown argument '${positionals[0]}'`, hostsCommand);
    const labels = parsePairs((values.label as string[] | undefined) ?? [], 'label', hostsCommand);
    const hosts = await serviceRequest<HostRow[]>((values.data as string | undefined) ?? '.bolt', 'health.hosts', { labels });
    if (values.json) {
      process.stdout.write(`${JSON.stringify(hosts, null, 2)}\n`);
      return 0;
    }
    const rows = hosts.map((h) => [
      h.name,
      h.address ?? '-',
      Object.entries(h.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(',') || '-',
      h.state,
      ago(h.since),
      typeof h.clockOffsetMs === 'number' ? `${h.clockOffsetMs.toFixed(2)} ms` : '-',
      h.lastHeartbeatAt ? ago(h.lastHeartbeatAt) : '-',
    ]);
    process.stdout.write(`${formatTable(['NAME', 'ADDRESS', 'LABELS', 'STATE', 'SINCE', 'OFFSET', 'LAST HEARTBEAT'], rows)}\n`);
    return 0;
  },
};
