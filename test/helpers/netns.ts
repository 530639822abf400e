/**
 * Hosts with their own addresses on one machine: network namespaces joined by veth pairs to a
 * bridge in the root namespace. Needs root and a working `ip netns`; `netnsAvailable()` says so.
 */
import { execFileSync } from 'node:child_process';

export interface NetnsHost {
  /** Namespace name, for `ip netns exec`. */
  name: string;
  /** The host's address on the bridge. */
  address: string;
}

export interface NetnsNetwork {
  /** The root namespace's address on the bridge: where servers listen. */
  gateway: string;
  hosts: NetnsHost[];
  /** Removes the namespaces, veths and the bridge. */
  destroy(): void;
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** True when this process is root and can create (and remove) a network namespace. */
export function netnsAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  const probe = `bolt-probe-${process.pid}`;
  try {
    ip('netns', 'add', probe);
    ip('netns', 'del', probe);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates `count` namespaces on a fresh /24 (10.<77..>.<n>.0): the root side gets .1, host i gets
 * .(11 + i). Names carry the pid, so parallel runs do not collide.
 */
export function createNetnsNetwork(count: number, subnet = 10 + (process.pid % 200)): NetnsNetwork {
  const tag = (process.pid % 100_000).toString(36);
  const bridge = `bbr${tag}`;
  const gateway = `10.77.${subnet}.1`;
  const hosts: NetnsHost[] = [];
  const destroy = () => {
    for (const h of hosts) {
      try {
        ip('netns', 'del', h.name);
      } catch {
        // already gone
      }
    }
    try {
      ip('link', 'del', bridge);
    } catch {
      // already gone
    }
  };
  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    ip('addr', 'add', `${gateway}/24`, 'dev', bridge);
    ip('link', 'set', bridge, 'up');
    for (let i = 0; i < count; i++) {
      const name = `bolt-${tag}-${i}`;
      const veth = `bv${tag}x${i}`;
      const address = `10.77.${subnet}.${11 + i}`;
      ip('netns', 'add', name);
      hosts.push({ name, address });
      ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name);
      ip('link', 'set', veth, 'master', bridge, 'up');
      ip('-n', name, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
      ip('-n', name, 'link', 'set', 'eth0', 'up');
      ip('-n', name, 'link', 'set', 'lo', 'up');
    }
  } catch (err) {
    destroy();
    throw err;
  }
  return { gateway, hosts, destroy };
}
