/** `bolt-core keys`: the server's accept list of client and sink keys. */
import { serviceRequest } from './admin-client.ts';
import { usageError, type Command } from './command.ts';
import { ago, formatTable } from './table.ts';

/** One entry of the trust store (served by the transport plugin as `transport.keys.*`). */
interface KeyEntry {
  fingerprint: string;
  role: string;
  state: string;
  host?: string;
  address?: string;
  labels?: Record<string, string>;
  firstSeen?: string | number;
  lastSeen?: string | number;
}

const STATES = new Set(['pending', 'accepted', 'rejected']);

export const keysCommand: Command = {
  usage: 'bolt-core keys list [--state pending|accepted|rejected] [--json] | bolt-core keys accept|reject FINGERPRINT [--role client|sink] [--json]   (all take --data DIR)',
  summary: 'list the keys of clients and sinks that contacted the server, and accept or reject them',
  options: {
    data: { type: 'string' },
    json: { type: 'boolean' },
    state: { type: 'string' },
    role: { type: 'string' },
  },
  async run({ values, positionals }) {
    const dataDir = (values.data as string | undefined) ?? '.bolt';
    const [action, fingerprint, ...extra] = positionals;
    const role = values.role as string | undefined;
    if (role !== undefined && role !== 'client' && role !== 'sink') throw usageError(`--role must be client or sink (got '${role}')`, keysCommand);
    if (action === 'accept' || action === 'reject') {
      if (!fingerprint || extra.length > 0) throw usageError(`keys ${action} takes one fingerprint (or a unique prefix of at least 8 characters)`, keysCommand);
      const entry = await serviceRequest<KeyEntry>(dataDir, `transport.keys.${action}`, { fingerprint, ...(role && { role }) });
      process.stdout.write(values.json ? `${JSON.stringify(entry)}\n` : `${entry.fingerprint} (${entry.role}, ${entry.host ?? 'unknown host'}): ${entry.state}\n`);
      return 0;
    }
    if (action !== 'list' && action !== undefined) throw usageError(`unknown keys action '${action}'`, keysCommand);
    if (fingerprint !== undefined) throw usageError(`unknown argument '${fingerprint}'`, keysCommand);
    const state = values.state as string | undefined;
    if (state !== undefined && !STATES.has(state)) throw usageError(`--state must be pending, accepted or rejected (got '${state}')`, keysCommand);
    const keys = (await serviceRequest<KeyEntry[]>(dataDir, 'transport.keys.list')).filter((k) => (!state || k.state === state) && (!role || k.role === role));
    if (values.json) {
      process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
      return 0;
    }
    const rows = keys.map((k) => [
      k.fingerprint.slice(0, 16),
      k.role,
      k.state,
      k.host ?? '-',
      k.address ?? '-',
      Object.entries(k.labels ?? {}).map(([key, v]) => `${key}=${v}`).join(',') || '-',
      k.lastSeen ? ago(k.lastSeen) : '-',
    ]);
    process.stdout.write(`${formatTable(['FINGERPRINT', 'ROLE', 'STATE', 'HOST', 'ADDRESS', 'LABELS', 'LAST SEEN'], rows)}\n`);
    return 0;
  },
};
