/**
 * Which hosts a run targets: the job's groups resolved against the health monitor's view of the
 * connected hosts, and the health gate (`require.healthy`). Pure functions of that view.
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { NormalizedJob } from '../../plugin-sdk/src/schemas/job.ts';
import type { HostView } from '../health-monitor/monitor.ts';
import type { Target } from './model.ts';

/** Hosts named in a refusal message at most; the details list all of them. */
const NAMED_IN_MESSAGE = 20;

/** Hosts a run may target: client hosts with a session now, not lost. */
export function usableHosts(hosts: readonly HostView[]): HostView[] {
  return hosts.filter((h) => h.connected !== false && h.state !== 'lost' && (h.role === undefined || h.role === 'client'));
}

function byName(a: HostView, b: HostView): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function describeLabels(labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
  return pairs.length === 0 ? 'any labels' : `labels ${pairs.join(', ')}`;
}

/**
 * Resolves every group of the job to its hosts, ordered by name (then id): the order that
 * `{{ hosts.GROUP[i] }}` templates index. A group with a `count` takes that many of its matching
 * hosts, preferring hosts whose state is in `healthyStates`, then by name. Throws
 * BOLT_ERR_RUN_NO_HOSTS naming the first group that matches no host, or fewer than its count.
 */
export function resolveGroups(job: NormalizedJob, hosts: readonly HostView[], healthyStates: ReadonlySet<string>): Map<string, HostView[]> {
  const candidates = usableHosts(hosts);
  const groups = new Map<string, HostView[]>();
  for (const [name, group] of Object.entries(job.groups)) {
    const wanted = Object.entries(group.labels);
    const matching = candidates.filter((h) => wanted.every(([k, v]) => Object.hasOwn(h.labels, k) && h.labels[k] === v));
    const needed = group.count === 'all' ? 1 : group.count;
    if (matching.length < needed) {
      const what = group.count === 'all' ? 'at least one host' : `${group.count} host${group.count === 1 ? '' : 's'}`;
      throw new BoltError('BOLT_ERR_RUN_NO_HOSTS',
        `group '${name}' (${describeLabels(group.labels)}) needs ${what}; ${matching.length} connected client host${matching.length === 1 ? '' : 's'} match`,
        { details: { group: name, labels: group.labels, count: group.count, matched: matching.length } });
    }
    const picked = group.count === 'all'
      ? matching
      : [...matching].sort((a, b) => Number(!healthyStates.has(a.state)) - Number(!healthyStates.has(b.state)) || byName(a, b)).slice(0, group.count);
    groups.set(name, picked.sort(byName));
  }
  return groups;
}

/** The hosts of the groups a task names, in group order, each once. */
export function targetsOf(groupNames: readonly string[], groups: ReadonlyMap<string, HostView[]>): Target[] {
  const seen = new Set<string>();
  const targets: Target[] = [];
  for (const name of groupNames) {
    for (const h of groups.get(name) ?? []) {
      if (seen.has(h.id)) continue;
      seen.add(h.id);
      targets.push({ id: h.id, name: h.name, address: h.address, labels: { ...h.labels } });
    }
  }
  return targets;
}

/**
 * The health gate: at least `share` (0..1) of the targeted hosts must be in `healthyStates`.
 * Throws BOLT_ERR_RUN_UNHEALTHY naming the hosts that are not, with their state and its reason.
 */
export function checkHealthGate(targeted: readonly HostView[], share: number, healthyStates: ReadonlySet<string>): void {
  const unhealthy = targeted.filter((h) => !healthyStates.has(h.state));
  const healthy = targeted.length - unhealthy.length;
  // A share like 0.9 of 10 hosts must ask for 9, not 9.000000000000002.
  const required = Math.ceil(Number((share * targeted.length).toFixed(9)));
  if (healthy >= required) return;
  const named = unhealthy.slice(0, NAMED_IN_MESSAGE).map((h) => `${h.name} (${h.state}${h.reason ? `: ${h.reason}` : ''})`);
  const more = unhealthy.length > NAMED_IN_MESSAGE ? ` and ${unhealthy.length - NAMED_IN_MESSAGE} more` : '';
  throw new BoltError('BOLT_ERR_RUN_UNHEALTHY',
    `health gate: ${healthy} of ${targeted.length} targeted hosts are healthy, the job requires ${required} (require.healthy ${Math.round(share * 1000) / 10}%); not healthy: ${named.join(', ')}${more}`,
    { details: { required, healthy, total: targeted.length, unhealthy: unhealthy.map((h) => ({ id: h.id, name: h.name, state: h.state, reason: h.reason })) } });
}
