/**
 * scheduler-dag: the server's job runner (see README.md). Wires the Scheduler to the bus:
 *
 * services  scheduler.runs.create { text, file?, vars? } → RunSummary, or ScheduleInfo for a job with schedule:
 *           scheduler.runs.list { limit? } → RunSummary[] (newest first)
 *           scheduler.runs.get { runId } → RunDetail
 *           scheduler.runs.cancel { runId } → RunSummary & { cancelled }
 *           scheduler.schedules.list → ScheduleRecord & { nextRunAt }[]
 *           scheduler.schedules.remove { scheduleId } | { job } → ScheduleRecord
 * topics    subscribes task.status, task.ack; publishes run.task.dispatched, run.updated, run.cancelled
 */
import path from 'node:path';
import { definePlugin } from 'bolt-plugin-sdk';
import { Scheduler, type SchedulerSettings } from './scheduler.ts';
import { RunStore } from './store.ts';

/** The server's clock, as the transport reads it: wall-clock based, sub-millisecond and monotonic. */
function serverClock(): number {
  return performance.timeOrigin + performance.now();
}

let running: { store: RunStore; scheduler: Scheduler } | null = null;

export default definePlugin<SchedulerSettings>({
  start(ctx) {
    const store = new RunStore(path.join(ctx.dataDir, 'scheduler.sqlite'));
    const scheduler = new Scheduler({ bus: ctx.bus, log: ctx.log, store, settings: ctx.config, signal: ctx.signal, now: serverClock });
    running = { store, scheduler };
    ctx.bus.subscribe('task.status', (data) => scheduler.onStatus(data));
    ctx.bus.subscribe('task.ack', (data) => scheduler.onAck(data));
    ctx.bus.provide('scheduler.runs.create', (data) => scheduler.create(data));
    ctx.bus.provide('scheduler.runs.list', (data) => scheduler.list(data));
    ctx.bus.provide('scheduler.runs.get', (data) => scheduler.get(data));
    ctx.bus.provide('scheduler.runs.cancel', (data) => scheduler.cancel(data));
    ctx.bus.provide('scheduler.schedules.list', () => scheduler.schedules());
    ctx.bus.provide('scheduler.schedules.remove', (data) => scheduler.removeSchedule(data));
    scheduler.start();
  },
  stop() {
    running?.scheduler.close();
    running?.store.close();
    running = null;
  },
});
