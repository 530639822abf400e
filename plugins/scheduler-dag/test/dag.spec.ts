import { expect } from 'chai';
import type { Core } from '../../../core/runtime.ts';
import type { RunView } from '../../writer-sqlite/services.ts';
import type { RunSummary } from '../model.ts';
import type { RunDetail } from '../scheduler.ts';
import { FakeServer, failureOf, host, serverDir, waitFor, type ServerDir } from './fixture.ts';

const MARGIN_MS = 300;
const DEFAULT_LEAD_MS = 400;

const FLEET = [
  host('h1', 'web-1', { role: 'web' }),
  host('h2', 'web-2', { role: 'web' }),
  host('h3', 'db-1', { role: 'db' }),
];

describe('scheduler-dag through a real core (server role, fake transport, health and sink on the bus)', function () {
  this.timeout(20_000);
  let dir: ServerDir;
  let core: Core;
  let fake: FakeServer;

  const create = (text: string, vars?: Record<string, string>) =>
    core.bus.request<RunSummary>('scheduler.runs.create', { text, file: 'job.yaml', ...(vars && { vars }) }, { timeoutMs: 15_000 });
  const get = (runId: string) => core.bus.request<RunDetail>('scheduler.runs.get', { runId });
  const taskStates = async (runId: string) => Object.fromEntries((await get(runId)).tasks.map((t) => [t.taskId, t.state]));
  const runState = async (runId: string) => (await get(runId)).state;

  before(async () => {
    dir = await serverDir({ togetherMarginMs: MARGIN_MS, togetherDefaultLeadMs: DEFAULT_LEAD_MS, retryLookupMs: 1000, providerWaitMs: 2000 });
    core = await dir.start();
    fake = new FakeServer(core.bus);
  });
  beforeEach(() => {
    fake.hosts = FLEET.map((h) => ({ ...h }));
    fake.ackDelayMs = null;
    fake.reachable = () => true;
  });
  after(async () => {
    fake?.close();
    await core?.stop();
    await dir?.remove();
  });

  it('walks a diamond in dependency order, independent tasks at once, and renders host templates', async () => {
    const run = await create(`name: diamond
groups:
  web: { labels: { role: web } }
  all: {}
tasks:
  - id: a
    hosts: web
    action: shell
    with: { run: "curl http://{{ hosts.web[0].address }}/ -H 'X-Peer: {{ hosts.web[1].name }}'" }
  - id: b
    hosts: all
    needs: a
    action: sleep
    with: { duration: 1s }
  - id: c
    hosts: web
    needs: a
    action: mark
  - id: d
    hosts: [web, all]
    needs: [b, c]
    action: mark
`);
    expect(run.state).to.equal('running');
    const a = await waitFor('a dispatched', () => fake.dispatchOf(run.runId, 'a'));
    expect(a.data).to.deep.include({ action: 'shell', startAt: null, timeoutMs: 2_147_483_647, targets: ['h1', 'h2'] });
    expect(a.data.with).to.deep.equal({ run: "curl http://10.0.0.1/ -H 'X-Peer: web-2'" });
    const announced = fake.announcementOf(run.runId, 'a')!;
    expect(announced.seq, 'run.task.dispatched comes before transport.dispatch').to.be.lessThan(a.seq);
    expect(announced.data.data).to.deep.include({ commandId: a.data.commandId, startAt: null, timeoutMs: 2_147_483_647, failure: { maxFailedHosts: { count: 0 } } });
    expect(announced.data.data.targets).to.deep.equal([{ id: 'h1', name: 'web-1' }, { id: 'h2', name: 'web-2' }]);
    expect(await taskStates(run.runId)).to.deep.equal({ a: 'running', b: 'waiting', c: 'waiting', d: 'waiting' });

    fake.status(run.runId, 'a', 'succeeded');
    await waitFor('b and c dispatched', () => fake.dispatchOf(run.runId, 'b') && fake.dispatchOf(run.runId, 'c'));
    expect(await taskStates(run.runId)).to.deep.equal({ a: 'succeeded', b: 'running', c: 'running', d: 'waiting' });
    expect(fake.dispatchOf(run.runId, 'b')!.data.targets).to.deep.equal(['h3', 'h1', 'h2']);

    fake.status(run.runId, 'b', 'succeeded');
    await waitFor('b recorded', async () => (await taskStates(run.runId)).b === 'succeeded');
    expect(fake.dispatchOf(run.runId, 'd'), 'd needs c too').to.equal(undefined);

    fake.status(run.runId, 'c', 'succeeded', { total: 2, finished: 2 });
    const d = await waitFor('d dispatched', () => fake.dispatchOf(run.runId, 'd'));
    expect(d.data.targets).to.deep.equal(['h1', 'h2', 'h3']);
    fake.status(run.runId, 'd', 'succeeded');
    await waitFor('the run succeeded', async () => (await runState(run.runId)) === 'succeeded');

    const detail = await get(run.runId);
    expect(detail.endedAt).to.be.a('number');
    const [ta, tb, tc, td] = detail.tasks;
    expect(ta!.dispatchedAt!).to.be.at.most(tb!.dispatchedAt!);
    expect(tb!.dispatchedAt!).to.be.at.most(td!.dispatchedAt!);
    expect(tc!.hosts).to.deep.equal({ total: 2, started: 2, finished: 2, failed: 0, timedout: 0, cancelled: 0, lost: 0 });
    expect(td!.targets.map((t) => t.name)).to.deep.equal(['web-1', 'web-2', 'db-1']);
    expect(td!.attempts).to.have.length(1);
    const list = await core.bus.request<RunSummary[]>('scheduler.runs.list');
    expect(list[0]).to.deep.include({ runId: run.runId, job: 'diamond', state: 'succeeded', scheduled: null });
    expect(list[0]!.tasks).to.deep.include({ total: 4, succeeded: 4, failed: 0 });
    const updates = fake.published.filter((p) => p.data.topic === 'run.updated' && (p.data.data.run as RunSummary).runId === run.runId);
    expect((updates.at(-1)!.data.data.run as RunSummary).state).to.equal('succeeded');
  });

  it('cancels the dependents of a failed task without dispatching them; independent tasks finish; the run fails', async () => {
    const run = await create(`name: broken-chain
groups: { all: {} }
tasks:
  - { id: a, hosts: all, action: shell, with: { run: "false" } }
  - { id: b, hosts: all, needs: a, action: mark }
  - { id: c, hosts: all, needs: b, action: mark }
  - { id: x, hosts: all, action: mark }
`);
    await waitFor('a and x dispatched', () => fake.dispatchOf(run.runId, 'a') && fake.dispatchOf(run.runId, 'x'));
    fake.status(run.runId, 'a', 'failed', { finished: 2, failed: 1 });
    await waitFor('b and c cancelled', async () => (await taskStates(run.runId)).c === 'cancelled');
    const detail = await get(run.runId);
    expect(detail.state, 'x is still running').to.equal('running');
    expect(detail.tasks.map((t) => [t.taskId, t.state, t.reason ?? null])).to.deep.equal([
      ['a', 'failed', null],
      ['b', 'cancelled', 'needs a, which failed'],
      ['c', 'cancelled', 'needs b, which was cancelled'],
      ['x', 'running', null],
    ]);
    fake.status(run.runId, 'x', 'succeeded');
    await waitFor('the run failed', async () => (await runState(run.runId)) === 'failed');
    expect(fake.dispatchedTasks(run.runId).sort()).to.deep.equal(['a', 'x']);
  });

  it('leaves maxFailedHosts to the sink: passes the policy on, and a succeeded status with failed hosts lets dependents run', async () => {
    const run = await create(`name: tolerant
groups: { all: {} }
tasks:
  - { id: a, hosts: all, action: shell, with: { run: "flaky" }, failure: { maxFailedHosts: 1 } }
  - { id: b, hosts: all, needs: a, action: mark, failure: { maxFailedHosts: 50% } }
`);
    await waitFor('a dispatched', () => fake.dispatchOf(run.runId, 'a'));
    expect(fake.announcementOf(run.runId, 'a')!.data.data.failure).to.deep.equal({ maxFailedHosts: { count: 1 } });
    fake.status(run.runId, 'a', 'succeeded', { finished: 2, failed: 1 });
    await waitFor('b dispatched', () => fake.dispatchOf(run.runId, 'b'));
    expect(fake.announcementOf(run.runId, 'b')!.data.data.failure).to.deep.equal({ maxFailedHosts: { percent: 50 } });
    fake.status(run.runId, 'b', 'succeeded');
    await waitFor('the run succeeded', async () => (await runState(run.runId)) === 'succeeded');
    expect((await get(run.runId)).tasks[0]!.hosts).to.deep.include({ finished: 2, failed: 1 });
  });

  it('refuses to start when the health gate fails, naming the unhealthy hosts, and when a group has too few hosts', async () => {
    fake.hosts[2] = host('h3', 'db-1', { role: 'db' }, 'unhealthy', 'eventLoopLagMs 1500 >= 1000');
    const before = (await core.bus.request<RunSummary[]>('scheduler.runs.list')).length;
    const job = (share: string, count = 'all') => `name: gated
require: { healthy: ${share} }
groups:
  all: { count: ${count} }
tasks:
  - { id: a, hosts: all, action: mark }
`;
    const refused = await failureOf(create(job('100%')));
    expect(refused.code).to.equal('BOLT_ERR_RUN_UNHEALTHY');
    expect(refused.message).to.include('2 of 3 targeted hosts are healthy, the job requires 3').and.include('db-1 (unhealthy: eventLoopLagMs 1500 >= 1000)');
    expect(refused.details?.unhealthy).to.deep.equal([{ id: 'h3', name: 'db-1', state: 'unhealthy', reason: 'eventLoopLagMs 1500 >= 1000' }]);

    const short = await failureOf(create(job('100%', '5')));
    expect(short.code).to.equal('BOLT_ERR_RUN_NO_HOSTS');
    expect(short.message).to.include("group 'all' (any labels) needs 5 hosts; 3 connected client hosts match");
    expect((await core.bus.request<RunSummary[]>('scheduler.runs.list')).length, 'a refused run is not recorded').to.equal(before);

    // With a count, the healthy hosts are picked first, so the gate passes.
    const picked = await create(job('100%', '2'));
    const a = await waitFor('a dispatched', () => fake.dispatchOf(picked.runId, 'a'));
    expect(a.data.targets).to.deep.equal(['h1', 'h2']);
    fake.status(picked.runId, 'a', 'succeeded');

    const lenient = await create(job('60%'));
    await waitFor('a dispatched to all three', () => fake.dispatchOf(lenient.runId, 'a')?.data.targets.length === 3);
    fake.status(lenient.runId, 'a', 'succeeded');
    await waitFor('the run succeeded', async () => (await runState(lenient.runId)) === 'succeeded');
  });

  it('starts together tasks after the longest recent dispatch round trip plus the margin; asap tasks have no startAt', async () => {
    const job = (name: string) => `name: ${name}
groups: { all: {} }
tasks:
  - { id: warm, hosts: all, action: mark }
  - { id: go, hosts: all, needs: warm, start: together, action: mark }
`;
    // Nothing measured yet (no acks so far): the default lead.
    const cold = await create(`name: cold
groups: { all: {} }
tasks:
  - { id: go, hosts: all, start: together, action: mark }
`);
    const coldGo = await waitFor('go dispatched', () => fake.dispatchOf(cold.runId, 'go'));
    const coldAnnounced = fake.announcementOf(cold.runId, 'go')!.data.data as { startAt: number; dispatchedAt: number };
    expect(coldGo.data.startAt! - coldAnnounced.dispatchedAt).to.equal(DEFAULT_LEAD_MS + MARGIN_MS);
    expect(coldGo.data.startAt! - coldGo.at, 'still ahead when the transport gets it').to.be.greaterThan(DEFAULT_LEAD_MS);
    fake.status(cold.runId, 'go', 'succeeded');

    fake.ackDelayMs = 80;
    const first = await create(job('together-1'));
    const warm = await waitFor('warm dispatched', () => fake.dispatchOf(first.runId, 'warm'));
    expect(warm.data.startAt).to.equal(null);
    await waitFor('acks of warm measured', async () => ((await get(first.runId)).tasks[0]!.attempts[0]!.acks.accepted === 3));
    fake.status(first.runId, 'warm', 'succeeded');
    const go = await waitFor('go dispatched', () => fake.dispatchOf(first.runId, 'go'));
    const announced = fake.announcementOf(first.runId, 'go')!.data.data as { startAt: number; dispatchedAt: number };
    expect(announced.startAt).to.equal(go.data.startAt);
    const lead = announced.startAt - announced.dispatchedAt;
    expect(lead, 'lead = longest measured round trip (>= 80 ms) + margin').to.be.within(80 + MARGIN_MS, 80 + MARGIN_MS + 250);
    expect(go.data.startAt! - go.at, 'still ahead by the margin when the transport gets it').to.be.greaterThan(MARGIN_MS);
    const detail = await get(first.runId);
    expect(detail.tasks[1]!.startAt).to.equal(go.data.startAt);
    fake.status(first.runId, 'go', 'succeeded');
    await waitFor('the run succeeded', async () => (await runState(first.runId)) === 'succeeded');
  });

  it('cancels a run: transport.cancel to every target of the running task, waiting tasks cancelled, run.cancelled published', async () => {
    const run = await create(`name: long
groups: { all: {} }
tasks:
  - { id: a, hosts: all, action: sleep, with: { duration: 1h } }
  - { id: b, hosts: all, needs: a, action: mark }
`);
    await waitFor('a dispatched', () => fake.dispatchOf(run.runId, 'a'));
    const answer = await core.bus.request<RunSummary & { cancelled: unknown[] }>('scheduler.runs.cancel', { runId: run.runId });
    expect(answer.state).to.equal('cancelled');
    expect(answer.cancelled).to.deep.equal([{ taskId: 'a', targets: 3, sent: 3 }]);
    expect(fake.cancels.filter((c) => c.data.runId === run.runId).map((c) => c.data)).to.deep.equal([{ runId: run.runId, taskId: 'a', targets: ['h3', 'h1', 'h2'] }]);
    expect(fake.published.some((p) => p.data.topic === 'run.cancelled' && p.data.data.runId === run.runId)).to.equal(true);
    expect(await taskStates(run.runId)).to.deep.equal({ a: 'running', b: 'cancelled' });

    fake.status(run.runId, 'a', 'cancelled');
    await waitFor('a cancelled on its hosts', async () => (await taskStates(run.runId)).a === 'cancelled');
    const detail = await get(run.runId);
    expect(detail.state).to.equal('cancelled');
    expect(detail.tasks[0]!.hosts).to.deep.include({ total: 3, cancelled: 3 });
    expect(fake.dispatchedTasks(run.runId)).to.deep.equal(['a']);

    const again = await core.bus.request<RunSummary & { cancelled: unknown[] }>('scheduler.runs.cancel', { runId: run.runId });
    expect(again).to.deep.include({ state: 'cancelled', cancelled: [] });
    expect((await failureOf(core.bus.request('scheduler.runs.cancel', { runId: 'run-nope' }))).code).to.equal('BOLT_ERR_RUN_NOT_FOUND');
    expect((await failureOf(get('run-nope'))).code).to.equal('BOLT_ERR_RUN_NOT_FOUND');
  });

  it('refuses an invalid job with BOLT_ERR_JOB_INVALID and the parser\'s issues (file, line, column)', async () => {
    const unknownAction = await failureOf(create(`name: bad
groups: { all: {} }
tasks:
  - id: a
    hosts: all
    action: teleport
`));
    expect(unknownAction.code).to.equal('BOLT_ERR_JOB_INVALID');
    expect(unknownAction.message).to.match(/^job\.yaml: the job has 1 problem; the first: job\.yaml:6:13: BOLT_ERR_JOB_UNKNOWN_ACTION: .*shell, sleep, mark/);
    const issues = unknownAction.details?.issues as { code: string; line: number; column: number; file: string }[];
    expect(issues.map((i) => [i.code, i.file, i.line, i.column])).to.deep.equal([['BOLT_ERR_JOB_UNKNOWN_ACTION', 'job.yaml', 6, 13]]);

    const syntax = await failureOf(create('name: bad\ntasks: [\n'));
    expect(syntax.code).to.equal('BOLT_ERR_JOB_INVALID');
    expect((syntax.details?.issues as { code: string }[])[0]!.code).to.equal('BOLT_ERR_JOB_SYNTAX');
  });

  it('retries a failed task on the hosts that failed it (from sink.run) as attempt 2, under the wire task id <id>.2', async () => {
    const run = await create(`name: retrying
groups: { all: {} }
tasks:
  - { id: t, hosts: all, action: shell, with: { run: "sometimes" }, retries: 1, failure: { maxFailedHosts: 34% } }
  - { id: u, hosts: all, needs: t, action: mark }
`);
    const stopSink = fake.serveSinkRun((runId): RunView | null => runId !== run.runId ? null : {
      run: { id: runId, jobName: 'retrying', state: 'running', createdAt: 0, startedAt: null, finishedAt: null, job: null },
      tasks: [{
        runId, taskId: 't', state: 'failed', hosts: { total: 3, ok: 1, failed: 2, lost: 0, started: 3, timedout: 0, cancelled: 0 },
        startedAt: null, finishedAt: null, startSkewMs: null, statusPublishedAt: null, dispatch: null,
        results: [
          { runId, taskId: 't', host: 'web-1', state: 'finished', exitCode: 0, startedAt: 1, durationMs: 1, stdoutTail: null, stderrTail: null },
          { runId, taskId: 't', host: 'web-2', state: 'failed', exitCode: 1, startedAt: 1, durationMs: 1, stdoutTail: null, stderrTail: null },
          { runId, taskId: 't', host: 'db-1', state: 'timedout', exitCode: null, startedAt: 1, durationMs: null, stdoutTail: null, stderrTail: null },
        ],
      }],
    });
    try {
      await waitFor('t dispatched', () => fake.dispatchOf(run.runId, 't'));
      fake.status(run.runId, 't', 'failed', { finished: 1, failed: 1, timedout: 1 });
      const retry = await waitFor('t.2 dispatched', () => fake.dispatchOf(run.runId, 't.2'));
      expect(retry.data.targets).to.deep.equal(['h3', 'h2']);
      expect(retry.data.commandId).to.not.equal(fake.dispatchOf(run.runId, 't')!.data.commandId);
      expect(fake.announcementOf(run.runId, 't.2')!.data.data).to.deep.include({ task: 't', attempt: 2, failure: { maxFailedHosts: { count: 1 } } });
      expect(fake.dispatchOf(run.runId, 'u'), 'u waits for the retry').to.equal(undefined);
      fake.status(run.runId, 't.2', 'succeeded', { total: 2 });
      await waitFor('u dispatched', () => fake.dispatchOf(run.runId, 'u'));
      const t = (await get(run.runId)).tasks[0]!;
      expect(t.state).to.equal('succeeded');
      expect(t.attempts.map((a) => [a.attempt, a.wireTaskId, a.status?.state])).to.deep.equal([[1, 't', 'failed'], [2, 't.2', 'succeeded']]);
      expect(t.hosts).to.deep.include({ total: 3, finished: 3, failed: 0, timedout: 0 });
      expect(t.results?.map((r) => [r.host, r.state, r.attempt])).to.deep.equal([['web-1', 'finished', 1], ['web-2', 'failed', 1], ['db-1', 'timedout', 1]]);
      fake.status(run.runId, 'u', 'succeeded');
      await waitFor('the run succeeded', async () => (await runState(run.runId)) === 'succeeded');
    } finally {
      stopSink();
    }
  });

  it('fails a task the transport could not hand to any host (BOLT_ERR_RUN_DISPATCH_FAILED), and the run with it', async () => {
    fake.reachable = () => false;
    const run = await create(`name: unreachable
groups: { all: {} }
tasks:
  - { id: a, hosts: all, action: mark }
`);
    await waitFor('the run failed', async () => (await runState(run.runId)) === 'failed');
    const a = (await get(run.runId)).tasks[0]!;
    expect(a.state).to.equal('failed');
    expect(a.error?.code).to.equal('BOLT_ERR_RUN_DISPATCH_FAILED');
    expect(a.error?.message).to.include('reached none of the 3 targets').and.include('web-1 (not connected)');
  });
});
