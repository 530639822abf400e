/**
 * collector-system: host metrics (CPU, memory, load, network, disk, filesystem) while tasks run,
 * streamed to the sink (see README.md). serveCollector follows the tasks and streams; this entry
 * says how to read each group: a SystemSampler per group, so that no file is read twice per tick.
 */
import { defineCollector } from '../../plugin-sdk/src/index.ts';
import type { DiskFilter, InterfaceFilter } from './procfs.ts';
import { SYSTEM_GROUPS, SystemSampler, type SystemGroup } from './sampler.ts';
import { serveCollector, type CollectorServer, type CollectorSettings } from './serve.ts';

interface SystemCollectorConfig extends CollectorSettings {
  perCore: boolean;
  mounts: string[];
  interfaces: InterfaceFilter;
  disks: DiskFilter;
  procRoot: string;
  sysRoot: string;
}

let server: CollectorServer | null = null;

export default defineCollector<SystemCollectorConfig>({
  start(ctx) {
    const { perCore, mounts, interfaces, disks, procRoot, sysRoot } = ctx.config;
    const samplerOptions = { perCore, mounts, interfaces, disks, procRoot, sysRoot };
    // Fails start with the pattern's own message when a filter is not a valid regular expression.
    new SystemSampler(samplerOptions);
    server = serveCollector(ctx, {
      groups: SYSTEM_GROUPS,
      openReader: (group) => new SystemSampler({ ...samplerOptions, groups: [group as SystemGroup] }),
    }, ctx.config);
  },
  async stop() {
    await server?.close();
    server = null;
  },
});
