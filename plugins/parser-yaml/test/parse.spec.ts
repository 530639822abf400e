import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { expect } from 'chai';
import fc from 'fast-check';
import { parse as parseYaml } from 'yaml';
import { ERROR_CODES } from 'bolt-plugin-sdk';
import { jobSchema } from '../../../plugin-sdk/src/schemas/job.ts';
import { formatIssue, parseJob, type JobIssue, type ParseOptions } from '../parse.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const casesDir = path.join(here, 'cases');
const tasksDir = path.join(here, '../../../tasks');
const ACTIONS = ['shell', 'sleep', 'mark', 'distribute', 'http-load'];

interface ExpectedIssue { code: string; line: number; column: number; message: string }

/** A valid job with one task whose `timeout`, `failure` or other keys the caller fills in. */
function oneTask(taskLines: string, top = ''): string {
  return `name: t\n${top}groups:\n  web: { labels: { role: web } }\ntasks:\n  - id: a\n    hosts: web\n    action: shell\n${taskLines}`;
}

function codes(issues: JobIssue[]): string[] {
  return issues.map((i) => i.code);
}

describe('parser-yaml: job files', () => {
  describe('case corpus (test/cases/<case>/)', () => {
    const cases = readdirSync(casesDir).sort();

    it('holds at least 35 broken job files and some valid ones', () => {
      const expectations = cases.map((c) => JSON.parse(readFileSync(path.join(casesDir, c, 'expected.json'), 'utf8')) as object);
      expect(expectations.filter((e) => !('job' in e)).length).to.be.at.least(35);
      expect(expectations.filter((e) => 'job' in e).length).to.be.at.least(5);
    });

    for (const name of cases) {
      it(name, () => {
        const dir = path.join(casesDir, name);
        const input = ['job.yaml', 'job.json'].find((f) => existsSync(path.join(dir, f)));
        expect(input, 'the case folder holds job.yaml or job.json').to.be.a('string');
        const file = `cases/${name}/${input!}`;
        const optionsFile = path.join(dir, 'options.json');
        const extra = existsSync(optionsFile) ? (JSON.parse(readFileSync(optionsFile, 'utf8')) as Partial<ParseOptions>) : {};
        const expected = JSON.parse(readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { job: unknown } | ExpectedIssue | ExpectedIssue[];
        const result = parseJob(readFileSync(path.join(dir, input!), 'utf8'), { file, ...extra });

        if ('job' in expected) {
          expect(result.issues.map(formatIssue)).to.deep.equal([]);
          expect(result.job).to.deep.equal(expected.job);
          return;
        }
        const wanted = Array.isArray(expected) ? expected : [expected];
        expect(result.job).to.equal(undefined);
        expect(result.issues.map((i) => `${i.code} ${i.line}:${i.column}`), result.issues.map(formatIssue).join('\n'))
          .to.deep.equal(wanted.map((w) => `${w.code} ${w.line}:${w.column}`));
        result.issues.forEach((issue, k) => {
          expect(issue.message).to.contain(wanted[k]!.message);
          expect(issue.file).to.equal(file);
          const line = formatIssue(issue);
          expect(line).to.not.match(/[\r\n]/);
          expect(line).to.contain(`: ${issue.code}: `);
          if (issue.line > 0) expect(line.startsWith(`${file}:${issue.line}:${issue.column}: `)).to.equal(true);
        });
      });
    }
  });

  describe('tasks/ examples', () => {
    const examples = readdirSync(tasksDir).filter((f) => /\.(ya?ml|json)$/.test(f));

    it('include quickstart.yaml and at least two others', () => {
      expect(examples).to.include('quickstart.yaml');
      expect(examples.length).to.be.at.least(3);
    });

    for (const f of examples) {
      it(`${f} parses clean with the built-in actions`, () => {
        const result = parseJob(readFileSync(path.join(tasksDir, f), 'utf8'), { file: `tasks/${f}`, knownActions: ACTIONS });
        expect(result.issues.map(formatIssue)).to.deep.equal([]);
        expect(result.job!.tasks.length).to.be.at.least(2);
      });
    }
  });

  describe('durations', () => {
    const accepted: Array<[string, number]> = [
      ['500ms', 500], ['30s', 30_000], ['5m', 300_000], ['1h', 3_600_000], ['1m30s', 90_000],
      ['1h30m', 5_400_000], ['1s250ms', 1250], ['1.5s', 1500], ['0.25m', 15_000], ['1500', 1500], ['"2m"', 120_000],
    ];
    for (const [written, ms] of accepted) {
      it(`timeout: ${written} is ${ms} ms`, () => {
        const result = parseJob(oneTask(`    timeout: ${written}\n`), { file: 'd.yaml' });
        expect(result.issues.map(formatIssue)).to.deep.equal([]);
        expect(result.job!.tasks[0]!.timeoutMs).to.equal(ms);
      });
    }
    const rejected = ['5 minutes', '-1s', '1d', '30s1m', '1m1m', '1.5', "''", '0', '0ms', '"1e3"', '2.5', '-100', 'ms', '1H', '2147483648', '25d'];
    for (const written of rejected) {
      it(`timeout: ${written} is BOLT_ERR_JOB_BAD_DURATION at the value`, () => {
        const result = parseJob(oneTask(`    timeout: ${written}\n`), { file: 'd.yaml' });
        expect(codes(result.issues)).to.deep.equal(['BOLT_ERR_JOB_BAD_DURATION']);
        expect([result.issues[0]!.line, result.issues[0]!.column]).to.deep.equal([8, 14]);
      });
    }
    it('the longest accepted duration is 2147483647 ms', () => {
      expect(parseJob(oneTask('    timeout: 2147483647\n'), { file: 'd.yaml' }).job!.tasks[0]!.timeoutMs).to.equal(2_147_483_647);
    });
  });

  describe('shares of hosts', () => {
    const failures: Array<[string, object]> = [['0', { count: 0 }], ['7', { count: 7 }], ['0%', { percent: 0 }], ['5%', { percent: 5 }], ['99.5%', { percent: 99.5 }], ['100%', { percent: 100 }]];
    for (const [written, share] of failures) {
      it(`maxFailedHosts: ${written}`, () => {
        const result = parseJob(oneTask(`    failure: { maxFailedHosts: ${written} }\n`), { file: 'p.yaml' });
        expect(result.job!.tasks[0]!.failure.maxFailedHosts).to.deep.equal(share);
      });
    }
    for (const written of ['150%', '100.5%', '-5%', '5 %', '"%"', 'five', '-1']) {
      it(`maxFailedHosts: ${written} is BOLT_ERR_JOB_BAD_PERCENT`, () => {
        expect(codes(parseJob(oneTask(`    failure: { maxFailedHosts: ${written} }\n`), { file: 'p.yaml' }).issues)).to.deep.equal(['BOLT_ERR_JOB_BAD_PERCENT']);
      });
    }
    const healthy: Array<[string, number]> = [['100%', 1], ['95%', 0.95], ['99.9%', 0.999], ['0.8', 0.8], ['1', 1], ['0', 0]];
    for (const [written, fraction] of healthy) {
      it(`require.healthy: ${written} is the fraction ${fraction}`, () => {
        const result = parseJob(oneTask('', `require: { healthy: ${written} }\n`), { file: 'p.yaml' });
        expect(result.job!.require.healthy).to.equal(fraction);
      });
    }
    for (const written of ['101%', '1.01', '-0.1', 'most']) {
      it(`require.healthy: ${written} is BOLT_ERR_JOB_BAD_PERCENT`, () => {
        expect(codes(parseJob(oneTask('', `require: { healthy: ${written} }\n`), { file: 'p.yaml' }).issues)).to.deep.equal(['BOLT_ERR_JOB_BAD_PERCENT']);
      });
    }
  });

  describe('vars', () => {
    const job = `name: "run {{ vars.tag }}"
vars: { port: 8080, debug: false, tag: base }
groups: { web: { labels: { role: web } } }
tasks:
  - id: a
    hosts: web
    action: shell
    with: { port: "{{ vars.port }}", debug: "{{ vars.debug }}", url: "http://x:{{ vars.port }}/{{ vars.extra }}" }
`;
    it('--var overrides a file var and keeps its type in a whole-value template', () => {
      const result = parseJob(job, { file: 'v.yaml', vars: { port: '9090', debug: 'true', extra: 'p' } });
      expect(result.issues.map(formatIssue)).to.deep.equal([]);
      expect(result.job!.tasks[0]!.with).to.deep.equal({ port: 9090, debug: true, url: 'http://x:9090/p' });
      expect(result.job!.name).to.equal('run base');
      expect(result.job!.vars).to.deep.equal({ port: '9090', debug: 'true', tag: 'base', extra: 'p' });
    });

    it('a var used but defined nowhere is BOLT_ERR_JOB_TEMPLATE at the expression', () => {
      const issues = parseJob(job, { file: 'v.yaml' }).issues;
      expect(issues.map((i) => [i.code, i.line, i.column, i.path])).to.deep.equal([['BOLT_ERR_JOB_TEMPLATE', 8, 96, '/tasks/0/with/url']]);
      expect(issues[0]!.message).to.contain('--var extra=VALUE');
    });

    it('a --var that does not fit the file var\'s type, or has a bad name, is BOLT_ERR_JOB_BAD_VAR outside the file (line 0)', () => {
      const issues = parseJob(job, { file: 'v.yaml', vars: { extra: 'p', debug: 'maybe', 'bad name': 'x' } }).issues;
      expect(issues.map((i) => [i.code, i.line, i.column, i.path])).to.deep.equal([
        ['BOLT_ERR_JOB_BAD_VAR', 0, 0, '/vars/debug'],
        ['BOLT_ERR_JOB_BAD_VAR', 0, 0, '/vars/bad name'],
      ]);
      expect(formatIssue(issues[0]!)).to.equal("v.yaml: BOLT_ERR_JOB_BAD_VAR: '--var debug=maybe': the job file gives 'debug' a boolean (false), so --var must be true or false");
    });

    it('var values are literal: a value holding {{ }} is never expanded, also not at dispatch', () => {
      const result = parseJob(job, { file: 'v.yaml', vars: { extra: '{{ hosts.web[0].address }}', tag: '{{ vars.port }}' } });
      expect(result.job!.name).to.equal('run {{ vars.port }}');
      expect(result.job!.tasks[0]!.with['url']).to.equal("http://x:8080/{{ '{{' }} hosts.web[0].address }}");
    });
  });

  describe('references and cycles', () => {
    it('reports every unknown group, unknown need and unknown action in one pass', () => {
      const text = `name: refs
groups: { web: { labels: { role: web } } }
tasks:
  - { id: a, hosts: [web, db], action: shell }
  - { id: b, hosts: cache, action: sheel, needs: [a, c] }
`;
      const issues = parseJob(text, { file: 'r.yaml', knownActions: ACTIONS }).issues;
      expect(issues.map((i) => [i.code, i.line, i.column, i.path])).to.deep.equal([
        ['BOLT_ERR_JOB_UNKNOWN_GROUP', 4, 27, '/tasks/0/hosts/1'],
        ['BOLT_ERR_JOB_UNKNOWN_GROUP', 5, 21, '/tasks/1/hosts'],
        ['BOLT_ERR_JOB_UNKNOWN_ACTION', 5, 36, '/tasks/1/action'],
        ['BOLT_ERR_JOB_UNKNOWN_TASK', 5, 54, '/tasks/1/needs/1'],
      ]);
    });

    it('any action is accepted when knownActions is not given', () => {
      expect(parseJob(oneTask('').replace('action: shell', 'action: anything'), { file: 'a.yaml' }).issues).to.deep.equal([]);
    });

    it('reports each of two separate cycles once, naming its tasks in order', () => {
      const text = `name: cycles
groups: { g: {} }
tasks:
  - { id: a, hosts: g, action: shell, needs: [b] }
  - { id: b, hosts: g, action: shell, needs: [a] }
  - { id: c, hosts: g, action: shell, needs: [e] }
  - { id: d, hosts: g, action: shell, needs: [c] }
  - { id: e, hosts: g, action: shell, needs: [d, a] }
`;
      const issues = parseJob(text, { file: 'c.yaml' }).issues;
      expect(issues.map((i) => [i.code, i.line, i.path])).to.deep.equal([
        ['BOLT_ERR_JOB_CYCLE', 4, '/tasks/0/needs/0'],
        ['BOLT_ERR_JOB_CYCLE', 6, '/tasks/2/needs/0'],
      ]);
      expect(issues[0]!.message).to.contain('a -> b -> a');
      expect(issues[1]!.message).to.contain('c -> e -> d -> c');
    });

    it('orders a 100-task chain written backwards', () => {
      const lines = ['name: chain', 'groups: { g: {} }', 'tasks:'];
      for (let i = 99; i >= 0; i--) lines.push(`  - { id: t${i}, hosts: g, action: shell${i > 0 ? `, needs: [t${i - 1}]` : ''} }`);
      const job = parseJob(lines.join('\n'), { file: 'chain.yaml' }).job!;
      expect(job.tasks.map((t) => t.order)).to.deep.equal(Array.from({ length: 100 }, (_, i) => 99 - i));
    });
  });

  describe('robustness', () => {
    it('never throws, and every issue has a known code and a position inside the file', () => {
      const valid = readFileSync(path.join(tasksDir, 'quickstart.yaml'), 'utf8');
      const mutated = fc.tuple(fc.nat(valid.length), fc.nat(20), fc.string({ maxLength: 12 }))
        .map(([at, cut, insert]) => valid.slice(0, at) + insert + valid.slice(at + cut));
      fc.assert(fc.property(fc.oneof(mutated, fc.string({ maxLength: 200 })), fc.boolean(), (text, json) => {
        const result = parseJob(text, { file: json ? 'f.json' : 'f.yaml' });
        const lineCount = text.split('\n').length;
        for (const issue of result.issues) {
          expect(ERROR_CODES).to.have.property(issue.code);
          expect(issue.line).to.be.within(1, lineCount);
          expect(issue.column).to.be.at.least(1);
          expect(formatIssue(issue)).to.not.match(/[\r\n]/);
        }
        expect(result.job === undefined).to.equal(result.issues.length > 0);
      }), { numRuns: 300 });
    });

    it('returns issues sorted by line and column, and a result that survives structured clone', () => {
      const result = parseJob(readFileSync(path.join(casesDir, 'several-issues/job.yaml'), 'utf8'), { file: 's.yaml' });
      const positions = result.issues.map((i) => i.line * 1000 + i.column);
      expect(positions).to.deep.equal([...positions].sort((a, b) => a - b));
      expect(structuredClone(result)).to.deep.equal(result);
      const ok = parseJob(readFileSync(path.join(tasksDir, 'quickstart.yaml'), 'utf8'), { file: 'q.yaml' });
      expect(structuredClone(ok)).to.deep.equal(ok);
    });

    it('does not let __proto__ keys in with or labels reach any prototype', () => {
      const text = oneTask('    with: { __proto__: { polluted: yes }, ok: 1 }\n').replace('labels: { role: web }', 'labels: { __proto__: x }');
      const job = parseJob(text, { file: 'p.yaml' }).job!;
      expect(({} as Record<string, unknown>)['polluted']).to.equal(undefined);
      expect(Object.getPrototypeOf(job.tasks[0]!.with)).to.equal(Object.prototype);
      expect(Object.hasOwn(job.tasks[0]!.with, '__proto__')).to.equal(true);
      expect(Object.hasOwn(job.groups['web']!.labels, '__proto__')).to.equal(true);
    });

    it('refuses an alias bomb instead of expanding it', () => {
      const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
      for (let i = 1; i < 9; i++) lines.push(`a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]`);
      const issues = parseJob(lines.join('\n'), { file: 'bomb.yaml' }).issues;
      expect(codes(issues)).to.deep.equal(['BOLT_ERR_JOB_SYNTAX']);
    });
  });

  describe('the exported schema', () => {
    it('compiles in a separate ajv and agrees with the parser on the case corpus', () => {
      const validate = new Ajv({ allErrors: true, allowUnionTypes: true, strict: true }).compile(jobSchema);
      let valid = 0;
      let unknownKeys = 0;
      for (const name of readdirSync(casesDir)) {
        const dir = path.join(casesDir, name);
        if (existsSync(path.join(dir, 'options.json')) || !existsSync(path.join(dir, 'job.yaml'))) continue;
        const expected = JSON.parse(readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { job?: unknown; code?: string };
        if (!expected.job && expected.code !== 'BOLT_ERR_JOB_UNKNOWN_KEY') continue;
        const data = parseYaml(readFileSync(path.join(dir, 'job.yaml'), 'utf8'), { merge: true }) as unknown;
        if (expected.job) {
          expect(validate(data), `${name}: ${JSON.stringify(validate.errors)}`).to.equal(true);
          valid++;
        } else {
          expect(validate(data), name).to.equal(false);
          unknownKeys++;
        }
      }
      expect([valid, unknownKeys]).to.satisfy(([v, u]: number[]) => v! >= 4 && u! >= 6);
    });
  });

  it('parses a 100-task job in a few milliseconds', () => {
    const lines = ['name: big', 'vars: { port: 8080 }', 'groups:', '  web: { labels: { role: web }, count: 10 }', '  load: { labels: { role: loadgen } }', 'metrics: { interval: 1s }', 'tasks:'];
    for (let i = 0; i < 100; i++) {
      lines.push(`  - id: t${i}`, `    hosts: [web, load]`, `    action: http-load`, `    needs: [${i > 0 ? `t${i - 1}` : ''}]`, `    timeout: 5m`,
        `    with: { url: "http://{{ hosts.web[${i % 10}].address }}:{{ vars.port }}/", rate: 100 }`, `    failure: { maxFailedHosts: 5% }`);
    }
    const text = lines.join('\n');
    for (let i = 0; i < 5; i++) parseJob(text, { file: 'big.yaml' });
    const runs = 20;
    const cpu = process.cpuUsage();
    for (let i = 0; i < runs; i++) expect(parseJob(text, { file: 'big.yaml' }).job!.tasks.length).to.equal(100);
    const used = process.cpuUsage(cpu);
    const msPerParse = (used.user + used.system) / 1000 / runs;
    // Generous bound (measured ~6 ms here): catches an accidental quadratic step, not noise.
    expect(msPerParse).to.be.below(50);
  });
});
