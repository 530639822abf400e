import { expect } from 'chai';
import type { Core } from '../../../core/runtime.ts';
import type { RunSummary, ScheduleRecord } from '../model.ts';
import type { ScheduleInfo } from '../scheduler.ts';
import { FakeServer, failureOf, host, serverDir, waitFor, type ServerDir } from './fixture.ts';

const EVERY_SECOND = `name: ticker
schedule: "* * * * * *"
groups: { all: {} }
tasks:
  - { id: tick, hosts: all, action: mark }
`;

describe('scheduler-dag: jobs with schedule: start runs from node-cron, and the schedules outlive a restart', function () {
  this.timeout(20_000);
  let dir: ServerDir;
  let core: Core | undefined;
  let fake: FakeServer | undefined;

  async function boot(): Promise<{ core: Core; fake: FakeServer }> {
    core = await dir.start();
    fake = new FakeServer(core.bus);
    fake.hosts = [host('h1', 'node-1', {})];
    return { core, fake };
  }
  const scheduledRuns = async (c: Core, scheduleId: string) =>
    (await c.bus.request<RunSummary[]>('scheduler.runs.list')).filter((r) => r.scheduled?.scheduleId === scheduleId);

  before(async () => {
    dir = await serverDir({ providerWaitMs: 5000 });
  });
  after(async () => {
    fake?.close();
    await core?.stop();
    await dir?.remove();
  });

  it('registers the schedule, starts a run on each firing (skipping while the last one runs), and re-arms it after a restart', async () => {
    const first = await boot();
    const info = await first.core.bus.request<ScheduleInfo>('scheduler.runs.create', { text: EVERY_SECOND, file: 'ticker.yaml' }, { timeoutMs: 15_000 });
    expect(info).to.deep.include({ job: 'ticker', schedule: '* * * * * *', replaced: false });
    expect(info.nextRunAt! - Date.now()).to.be.within(-50, 1050);

    // The first run stays running: the next firings are skipped, not stacked.
    const firstRun = await waitFor('a first scheduled run', async () => (await scheduledRuns(first.core, info.scheduleId))[0]);
    expect(firstRun).to.deep.include({ job: 'ticker', state: 'running', scheduled: { scheduleId: info.scheduleId, schedule: '* * * * * *' } });
    await waitFor('two more firings', async () => {
      const [s] = await first.core.bus.request<ScheduleRecord[]>('scheduler.schedules.list');
      return s !== undefined && s.fired >= 3;
    });
    expect(await scheduledRuns(first.core, info.scheduleId)).to.have.length(1);
    first.fake.status(firstRun.runId, 'tick', 'succeeded');
    const second = await waitFor('a second scheduled run', async () => (await scheduledRuns(first.core, info.scheduleId)).find((r) => r.runId !== firstRun.runId));
    first.fake.status(second.runId, 'tick', 'succeeded');

    // Registering the same job name again replaces its schedule.
    const again = await first.core.bus.request<ScheduleInfo>('scheduler.runs.create', { text: EVERY_SECOND, file: 'ticker.yaml' }, { timeoutMs: 15_000 });
    expect(again).to.deep.include({ scheduleId: info.scheduleId, replaced: true });

    first.fake.close();
    await first.core.stop();
    core = undefined;

    const restarted = await boot();
    const [listed] = await restarted.core.bus.request<Array<ScheduleRecord & { nextRunAt: number | null }>>('scheduler.schedules.list');
    expect(listed).to.deep.include({ scheduleId: info.scheduleId, job: 'ticker', schedule: '* * * * * *' });
    expect(listed!.nextRunAt).to.be.a('number');
    const known = new Set((await scheduledRuns(restarted.core, info.scheduleId)).map((r) => r.runId));
    const fresh = await waitFor('a run fired after the restart', async () => (await scheduledRuns(restarted.core, info.scheduleId)).find((r) => !known.has(r.runId) && r.state === 'running'));
    await waitFor('its task dispatched', () => restarted.fake.dispatchOf(fresh.runId, 'tick'));
    restarted.fake.status(fresh.runId, 'tick', 'succeeded');

    // A firing that cannot start (no host matches any more) is recorded as a failed run with its error.
    restarted.fake.hosts = [];
    const refused = await waitFor('a refused firing recorded', async () => (await scheduledRuns(restarted.core, info.scheduleId)).find((r) => r.state === 'failed'));
    expect(refused.error?.code).to.equal('BOLT_ERR_RUN_NO_HOSTS');

    const removed = await restarted.core.bus.request<ScheduleRecord>('scheduler.schedules.remove', { scheduleId: info.scheduleId });
    expect(removed.job).to.equal('ticker');
    expect(await restarted.core.bus.request('scheduler.schedules.list')).to.deep.equal([]);
    expect((await failureOf(restarted.core.bus.request('scheduler.schedules.remove', { scheduleId: info.scheduleId }))).code).to.equal('BOLT_ERR_RUN_SCHEDULE_NOT_FOUND');
  });
});
