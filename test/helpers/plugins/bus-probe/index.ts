/**
 * A test-only plugin for end-to-end tests of real `bolt-core` processes: it subscribes to the bus
 * topics that show a command's path and what hosts stream, which nothing logs (a server's
 * `task.ack` and `sink.task.event`, a client's `client.task.dispatch` and `client.task.cancel`),
 * and answers `probe.events` `{ topic }` with `{ total, events }`: how many were published on
 * that topic since start, and the latest RECENT_PER_TOPIC of them, oldest first.
 * Load it with `--plugins test/helpers/plugins` (next to `--plugins plugins`).
 */
import { definePlugin } from 'bolt-plugin-sdk';

const TOPICS = ['task.ack', 'sink.task.event', 'client.task.dispatch', 'client.task.cancel'] as const;
/** Events kept per topic; older ones are counted in `total` only. */
const RECENT_PER_TOPIC = 1000;

export default definePlugin({
  start(ctx) {
    const recorded = new Map<string, { total: number; events: unknown[] }>(TOPICS.map((t) => [t, { total: 0, events: [] }]));
    for (const topic of TOPICS) {
      const record = recorded.get(topic)!;
      ctx.bus.subscribe(topic, (data) => {
        record.total++;
        record.events.push(data);
        if (record.events.length > RECENT_PER_TOPIC) record.events.shift();
      });
    }
    ctx.bus.provide('probe.events', (data) => {
      const topic = (data as { topic?: unknown } | undefined)?.topic;
      const record = typeof topic === 'string' ? recorded.get(topic) : undefined;
      if (record === undefined) throw new TypeError(`probe.events takes { topic: ${TOPICS.join(' | ')} }`);
      return record;
    });
  },
});
