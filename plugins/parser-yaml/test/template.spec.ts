import { expect } from 'chai';
import fc from 'fast-check';
import { BoltError } from 'bolt-plugin-sdk';
import { parseJob } from '../parse.ts';
import { escapeTemplateText, renderTemplate, scanTemplates, type TemplateContext } from '../template.ts';

const ctx: TemplateContext = {
  vars: { port: '8080', empty: '' },
  hosts: {
    web: [
      { name: 'web-1', address: '10.0.0.1', labels: { role: 'web', 'topology.kubernetes.io/zone': 'eu-1a' } },
      { name: 'web-2', address: '10.0.0.2', labels: { role: 'web' } },
    ],
    load: [],
  },
};

/** Runs `fn`, expecting a BoltError BOLT_ERR_JOB_TEMPLATE; returns its message. */
function templateError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(BoltError);
    expect((err as BoltError).code).to.equal('BOLT_ERR_JOB_TEMPLATE');
    return (err as BoltError).message;
  }
  expect.fail('expected a BOLT_ERR_JOB_TEMPLATE error');
}

describe('parser-yaml: templates', () => {
  describe('scanTemplates', () => {
    it('finds each expression with its position and meaning', () => {
      const s = 'a {{ vars.port }} b {{hosts.web[1].labels.role}} {{ "lit" }}';
      expect(scanTemplates(s)).to.deep.equal([
        { start: 2, end: 17, raw: '{{ vars.port }}', expr: { kind: 'var', name: 'port' } },
        { start: 20, end: 48, raw: '{{hosts.web[1].labels.role}}', expr: { kind: 'host', group: 'web', index: 1, field: 'label', label: 'role' } },
        { start: 49, end: 60, raw: '{{ "lit" }}', expr: { kind: 'literal', text: 'lit' } },
      ]);
    });

    it('returns nothing for text without {{, and ignores a lone }}', () => {
      expect(scanTemplates('plain } }} text')).to.deep.equal([]);
    });

    const refused: Array<[string, string]> = [
      ['{{ constructor }}', "'constructor' is not allowed"],
      ['{{ hosts.__proto__ }}', "'__proto__' is not allowed"],
      ['{{ hosts.web.__proto__ }}', "'__proto__' is not allowed"],
      ['{{ vars.constructor }}', "'constructor' is not allowed"],
      ['{{ hosts.web[0].labels.prototype }}', "'prototype' is not allowed"],
      ['{{ hosts.web[0] }}', 'host templates have the form'],
      ['{{ hosts.web[-1].name }}', 'host templates have the form'],
      ['{{ vars.a b }}', 'a var name has'],
      ['{{ }}', 'empty template'],
      ['{{ process.exit() }}', 'unsupported expression'],
      ['{{ vars.port', "has no matching '}}'"],
    ];
    for (const [raw, why] of refused) {
      it(`refuses ${raw}`, () => {
        const [token] = scanTemplates(`x ${raw} y`);
        expect(token!.expr).to.equal(undefined);
        expect(token!.error).to.contain(why);
      });
    }
  });

  describe('renderTemplate', () => {
    it('fills in vars, host addresses, names and labels (label keys may hold dots and slashes)', () => {
      const value = {
        url: 'http://{{ hosts.web[1].address }}:{{ vars.port }}/',
        list: ['{{ hosts.web[0].name }}', '{{ hosts.web[0].labels.topology.kubernetes.io/zone }}', 7, null, true],
        nested: { empty: '[{{ vars.empty }}]', brace: "{{ '{{' }}x}}" },
      };
      expect(renderTemplate(value, ctx)).to.deep.equal({
        url: 'http://10.0.0.2:8080/',
        list: ['web-1', 'eu-1a', 7, null, true],
        nested: { empty: '[]', brace: '{{x}}' },
      });
    });

    it('does not modify its input and returns values that are not strings, arrays or plain objects as they are', () => {
      const input = { a: ['{{ vars.port }}'] };
      const frozen = structuredClone(input);
      renderTemplate(input, ctx);
      expect(input).to.deep.equal(frozen);
      const date = new Date(0);
      expect(renderTemplate(date, ctx)).to.equal(date);
      expect(renderTemplate(42, ctx)).to.equal(42);
    });

    it('does not scan substituted text again', () => {
      const sneaky: TemplateContext = { vars: { x: '{{ hosts.web[0].address }}' }, hosts: {} };
      expect(renderTemplate('{{ vars.x }}', sneaky)).to.equal('{{ hosts.web[0].address }}');
    });

    const failures: Array<[string, string]> = [
      ['{{ vars.nope }}', "no var 'nope'"],
      ['{{ vars.toString }}', "no var 'toString'"],
      ['{{ hosts.db[0].address }}', "no group 'db'"],
      ['{{ hosts.web[2].address }}', "group 'web' has 2 hosts"],
      ['{{ hosts.load[0].name }}', "group 'load' has 0 hosts"],
      ['{{ hosts.web[1].labels.zone }}', "host 'web-2' has no label 'zone'"],
      ['{{ hosts.web[0].labels.hasOwnProperty }}', "has no label 'hasOwnProperty'"],
      ['{{ hosts.__proto__ }}', "'__proto__' is not allowed"],
      ['{{ constructor }}', "'constructor' is not allowed"],
      ['{{ this.constructor.constructor("return process")() }}', 'not allowed'],
      ['{{ vars.port', "has no matching '}}'"],
    ];
    for (const [raw, why] of failures) {
      it(`throws BOLT_ERR_JOB_TEMPLATE naming ${raw}`, () => {
        const message = templateError(() => renderTemplate({ deep: [`before ${raw} after`] }, ctx));
        expect(message).to.contain(raw.includes('}}') ? raw : '{{ vars.port');
        expect(message).to.contain(why);
      });
    }

    it('keeps an own __proto__ key as data and never changes a prototype', () => {
      const value = JSON.parse('{ "__proto__": { "polluted": "{{ vars.port }}" } }') as unknown;
      const out = renderTemplate(value, ctx) as Record<string, unknown>;
      expect(Object.getPrototypeOf(out)).to.equal(Object.prototype);
      expect(Object.hasOwn(out, '__proto__')).to.equal(true);
      expect(({} as Record<string, unknown>)['polluted']).to.equal(undefined);
    });

    it('renders escaped text back to the original, whatever it holds', () => {
      fc.assert(fc.property(fc.string({ maxLength: 40, unit: fc.constantFrom('{', '}', 'a', ' ', "'", '"') }), (text) => {
        expect(renderTemplate(escapeTemplateText(text), { vars: {}, hosts: {} })).to.equal(text);
      }), { numRuns: 500 });
    });
  });

  describe('parse time and dispatch time together', () => {
    it('a parsed task\'s with renders to the final action input', () => {
      const text = `name: t
vars: { port: 8080, fmt: "{{.State}}" }
groups:
  web: { labels: { role: web }, count: 2 }
  load: { labels: { role: loadgen } }
tasks:
  - id: hammer
    hosts: load
    action: http-load
    with:
      url: "http://{{ hosts.web[1].address }}:{{ vars.port }}/"
      check: "docker inspect -f '{{ vars.fmt }}' nginx"
      port: "{{ vars.port }}"
`;
      const { job, issues } = parseJob(text, { file: 't.yaml' });
      expect(issues).to.deep.equal([]);
      const rendered = renderTemplate(job!.tasks[0]!.with, { vars: job!.vars, hosts: ctx.hosts });
      expect(rendered).to.deep.equal({ url: 'http://10.0.0.2:8080/', check: "docker inspect -f '{{.State}}' nginx", port: 8080 });
    });
  });
});
