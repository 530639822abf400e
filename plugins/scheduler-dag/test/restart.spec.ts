import { expect } from 'chai';
import type { Core } from '../../../core/runtime.ts';
import type { RunView } from '../../writer-sqlite/services.ts';
import type { RunSummary } from '../model.ts';
import type { RunDetail } from '../scheduler.ts';
import { FakeServer, host, serverDir, waitFor, type ServerDir } from './fixture.ts';

const FLEET = [host('h1', 'web-1', { role: 'web' }), host('h2', 'web-2', { role: 'web' })];

/** Two tasks, the dependent one written first: runs keep the file's order of tasks across a restart. */
const chain = (name: string, first: string, second: string) => `name: ${name}
groups: { all: {} }
tasks:
  - { id: ${second}, hosts: all, needs: ${first}, action: mark }
  - { id: ${first}, hosts: all, action: mark }
`;

describe('scheduler-dag: a server stopped mid-run and started again on the same data directory resumes its runs', function () {
  this.timeout(20_000);
  let dir: ServerDir;
  let core: Core | undefined;
  let fake: FakeServer | undefined;

  async function boot(): Promise<{ core: Core; fake: FakeServer }> {
    core = await dir.start();
    fake = new FakeServer(core.bus);
    fake.hosts = FLEET.map((h) => ({ ...h }));
    return { core, fake };
  }

  before(async () => {
    dir = await serverDir({ providerWaitMs: 5000 });
  });
  after(async () => {
    fake?.close();
    await core?.stop();
    await dir?.remove();
  });

  it('keeps dispatched tasks waiting for their status, adopts statuses the sink decided meanwhile, and re-sends a dispatch cut short', async () => {
    const first = await boot();
    first.fake.hold = (req) => req.taskId === 'm';
    const create = (text: string) => first.core.bus.request<RunSummary>('scheduler.runs.create', { text, file: 'job.yaml' }, { timeoutMs: 15_000 });
    // R1: x dispatched; its status comes after the restart.
    const r1 = await create(chain('r1', 'x', 'y'));
    // R2: p dispatched; the sink decides it while the server is down (only sink.run tells).
    const r2 = await create(chain('r2', 'p', 'q'));
    // R3: m handed to the transport, which never answers before the stop.
    const r3 = await create(`name: r3
groups: { all: {} }
tasks:
  - { id: m, hosts: all, start: together, action: mark }
`);
    await waitFor('x, p and m dispatched', () => first.fake.dispatchOf(r1.runId, 'x') && first.fake.dispatchOf(r2.runId, 'p') && first.fake.dispatchOf(r3.runId, 'm'));
    const mBefore = first.fake.dispatchOf(r3.runId, 'm')!.data;
    first.fake.close();
    await first.core.stop();
    core = undefined;

    const second = await boot();
    const view = (runId: string): RunView | null => runId !== r2.runId ? null : {
      run: { id: runId, jobName: 'r2', state: 'running', createdAt: 0, startedAt: null, finishedAt: null, job: null },
      tasks: [{
        runId, taskId: 'p', state: 'succeeded', hosts: { total: 2, ok: 2, failed: 0, lost: 0, started: 2, timedout: 0, cancelled: 0 },
        startedAt: null, finishedAt: null, startSkewMs: null, statusPublishedAt: null, dispatch: null, results: [],
      }],
    };
    second.fake.serveSinkRun(view);
    const get = (runId: string) => second.core.bus.request<RunDetail>('scheduler.runs.get', { runId });

    // R3: the same command (same id, same instant) goes out again; a client that has it refuses the replay.
    const mAgain = await waitFor('m sent again', () => second.fake.dispatchOf(r3.runId, 'm'));
    expect(mAgain.data).to.deep.equal(mBefore);
    // R2: p's status is adopted from sink.run; q is dispatched without any task.status on the bus.
    await waitFor('q dispatched', () => second.fake.dispatchOf(r2.runId, 'q'));
    expect((await get(r2.runId)).tasks[1]!.hosts).to.deep.include({ total: 2, finished: 2 });
    // R1: x is not dispatched again; it waits for its status.
    expect(second.fake.dispatchOf(r1.runId, 'x')).to.equal(undefined);
    expect((await get(r1.runId)).tasks.map((t) => [t.taskId, t.state])).to.deep.equal([['y', 'waiting'], ['x', 'running']]);
    second.fake.status(r1.runId, 'x', 'succeeded');
    await waitFor('y dispatched', () => second.fake.dispatchOf(r1.runId, 'y'));

    second.fake.status(r1.runId, 'y', 'succeeded');
    second.fake.status(r2.runId, 'q', 'succeeded');
    second.fake.status(r3.runId, 'm', 'succeeded');
    await waitFor('all three runs succeeded', async () => {
      const runs = await second.core.bus.request<RunSummary[]>('scheduler.runs.list');
      return [r1, r2, r3].every((r) => runs.find((s) => s.runId === r.runId)?.state === 'succeeded');
    });
    expect((await get(r1.runId)).tasks.map((t) => t.attempts.length)).to.deep.equal([1, 1]);
  });
});
