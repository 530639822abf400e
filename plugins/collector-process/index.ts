/**
 * collector-process: CPU and RSS of the processes bolt.yaml names, while tasks that collect
 * `process` run (see README.md). The task windows, shared loops and streaming are collector-system's
 * serveCollector; this entry reads the one group it serves with a ProcessSampler.
 */
import { defineCollector } from '../../plugin-sdk/src/index.ts';
import { serveCollector, type CollectorServer, type CollectorSettings, type GroupReader } from '../collector-system/serve.ts';
import { getconf, ProcessSampler, type ProcessMatch } from './procstat.ts';

interface ProcessCollectorConfig extends CollectorSettings {
  processes: ProcessMatch[];
  fullScanIntervalMs: number;
  procRoot: string;
}

let server: CollectorServer | null = null;

export default defineCollector<ProcessCollectorConfig>({
  async start(ctx) {
    const { processes, fullScanIntervalMs, procRoot } = ctx.config;
    // Asked once here rather than by every sampler a new sampling loop makes.
    const [clockTicks, pageSize] = await Promise.all([getconf('CLK_TCK', 100), getconf('PAGESIZE', 4096)]);
    const options = { matches: processes, fullScanIntervalMs, procRoot, clockTicks, pageSize };
    // Fails start with the sampler's own message when two entries share a label.
    if (processes.length > 0) new ProcessSampler(options);
    let warned = false;
    // A task asks for `process` but bolt.yaml names none: say so once, sample nothing.
    const nothingToWatch: GroupReader = {
      async sample() {
        if (!warned) ctx.log.warn(`a task collects 'process' but plugins.${ctx.name}.processes in bolt.yaml names no process; nothing is sampled`);
        warned = true;
        return { metrics: [], errors: [] };
      },
    };
    server = serveCollector(ctx, {
      groups: ['process'],
      openReader: () => (processes.length > 0 ? new ProcessSampler(options) : nothingToWatch),
    }, ctx.config);
  },
  async stop() {
    await server?.close();
    server = null;
  },
});
