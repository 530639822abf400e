import { expect } from 'chai';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import type { ParseResult } from '../index.ts';

const PLUGIN_DIR = new URL('..', import.meta.url);

const GOOD = `name: two-steps
vars: { who: world }
groups:
  web: { labels: { role: web } }
tasks:
  - id: greet
    hosts: web
    action: shell
    with: { run: "echo hello {{ vars.who }}" }
  - id: wait
    hosts: web
    needs: greet
    action: sleep
    with: { duration: 1s }
`;

const BROKEN = `name: broken
groups:
  web: {}
tasks:
  - id: a
    hosts: web
    action: shell
    timout: 5s
  - id: b
    hosts: db
    action: teleport
`;

describe('parser-yaml plugin (pool, through a real core)', function () {
  this.timeout(20_000);
  let host: TestHost;

  before(async () => {
    host = await createTestHost(PLUGIN_DIR);
    await host.waitFor('running');
  });
  after(async () => host?.close());

  it('answers the parser-yaml service with the normalized job for a valid file, --vars applied', async () => {
    const result = await host.bus.request<ParseResult>('parser-yaml', { text: GOOD, file: 'two.yaml', vars: { who: 'bolt' }, knownActions: ['shell', 'sleep'] });
    expect(result.issues).to.deep.equal([]);
    expect(result.job?.name).to.equal('two-steps');
    expect(result.job?.tasks.map((t) => [t.id, t.needs, t.order])).to.deep.equal([['greet', [], 0], ['wait', ['greet'], 1]]);
    expect(result.job?.tasks[0]?.with).to.deep.equal({ run: 'echo hello bolt' });
  });

  it('answers issues with file, line and column for a broken file', async () => {
    const result = await host.bus.request<ParseResult>('parser-yaml', { text: BROKEN, file: 'broken.yaml', knownActions: ['shell', 'sleep', 'mark'] });
    expect(result.job).to.equal(undefined);
    expect(result.issues.map((i) => [i.code, i.file, i.line, i.column])).to.deep.equal([
      ['BOLT_ERR_JOB_UNKNOWN_KEY', 'broken.yaml', 8, 5],
    ]);
  });

  it('reports reference errors (unknown group, unknown action) once the file has the right shape', async () => {
    const fixed = BROKEN.replace('timout', 'timeout');
    const result = await host.bus.request<ParseResult>('parser-yaml', { text: fixed, file: 'broken.yaml', knownActions: ['shell'] });
    expect(result.issues.map((i) => [i.code, i.line])).to.deep.equal([
      ['BOLT_ERR_JOB_UNKNOWN_GROUP', 10],
      ['BOLT_ERR_JOB_UNKNOWN_ACTION', 11],
    ]);
    expect(result.issues[1]?.message).to.include('shell');
  });

  it('refuses a request of the wrong shape with a coded bus error', async () => {
    const err = await host.bus.request('parser-yaml', { file: 'x.yaml' }).then(() => null, (e: unknown) => e as Error & { code: string; cause?: { message: string } });
    expect(err?.code).to.equal('BOLT_ERR_BUS_HANDLER_FAILED');
    expect(err?.message).to.include('parser-yaml takes');
  });
});
