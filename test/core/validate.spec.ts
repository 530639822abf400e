/** `bolt-core validate` as a user runs it: the parser plugin in a private core, exit codes 0 and 2. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PLUGINS, REPO } from '../helpers/core.ts';
import { BIN } from '../helpers/processes.ts';

const CASES = path.join(PLUGINS, 'parser-yaml', 'test', 'cases');

function validate(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'validate', ...args], { cwd: REPO, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('bolt-core validate', function () {
  this.timeout(60_000);

  it('summarizes a valid job and exits 0', () => {
    const r = validate('tasks/quickstart.yaml');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.include("job 'quickstart' is valid");
    expect(r.stdout).to.match(/line-up: mark on everyone, after pause, starting together/);
  });

  // A few of the parser's broken-job corpus, end to end through the CLI: file:line:column, code, message.
  for (const name of ['bad-cron', 'cycle-three', 'unknown-key-task', 'syntax-tab-indent']) {
    it(`prints where and what is wrong in ${name} and exits 2`, () => {
      const expected = JSON.parse(readFileSync(path.join(CASES, name, 'expected.json'), 'utf8')) as { code: string; line: number; column: number; message: string };
      const job = path.join(CASES, name, 'job.yaml');
      const r = validate(path.relative(REPO, job));
      expect(r.code, r.stdout).to.equal(2);
      expect(r.stderr).to.include(`${path.relative(REPO, job)}:${expected.line}:${expected.column}: ${expected.code}: `);
      expect(r.stderr).to.include(expected.message);
    });
  }

  it('gives --json with the issues, and exits 2 for a file that does not exist', () => {
    const r = validate('--json', path.relative(REPO, path.join(CASES, 'bad-cron', 'job.yaml')));
    expect(r.code).to.equal(2);
    const out = JSON.parse(r.stdout) as { valid: boolean; issues: { code: string }[] };
    expect(out.valid).to.equal(false);
    expect(out.issues.map((i) => i.code)).to.include('BOLT_ERR_JOB_BAD_CRON');
    const missing = validate('no/such/job.yaml');
    expect(missing.code).to.equal(2);
    expect(missing.stderr).to.include('BOLT_ERR_CLI_USAGE');
  });
});
