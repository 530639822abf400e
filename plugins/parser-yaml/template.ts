/**
 * `{{ ... }}` templates in job files. The grammar is closed: an expression is one of
 *
 *   {{ vars.NAME }}                    a job var (substituted when the job is parsed)
 *   {{ hosts.GROUP[i].address }}       the i-th host (from 0) of a group, resolved at dispatch;
 *   {{ hosts.GROUP[i].name }}            also .name and .labels.KEY
 *   {{ hosts.GROUP[i].labels.KEY }}
 *   {{ '...' }} or {{ "..." }}         literal text, e.g. {{ '{{' }} for a literal "{{"
 *
 * Nothing is evaluated: names are looked up as own keys of plain records, and `__proto__`,
 * `constructor` and `prototype` are refused anywhere in an expression. Output is not scanned again,
 * so a substituted value can never inject a template.
 */
import { BoltError } from 'bolt-plugin-sdk';

export type TemplateExpr =
  | { kind: 'var'; name: string }
  | { kind: 'host'; group: string; index: number; field: 'address' | 'name' }
  | { kind: 'host'; group: string; index: number; field: 'label'; label: string }
  | { kind: 'literal'; text: string };

/** One `{{ ... }}` occurrence in a string: where it is, its exact text, and what it means or why it is refused. */
export interface TemplateToken {
  /** Index of the opening `{{` in the string. */
  start: number;
  /** Index just after the closing `}}` (the string's length when it is unclosed). */
  end: number;
  raw: string;
  expr?: TemplateExpr;
  /** Set instead of `expr` when the expression is not in the grammar. */
  error?: string;
}

/** A host as templates see it. */
export interface TemplateHost {
  name: string;
  address: string;
  labels: Record<string, string>;
}

export interface TemplateContext {
  vars: Record<string, string>;
  /** Hosts of each group, in the order the scheduler picked them. */
  hosts: Record<string, TemplateHost[]>;
}

const RESERVED = /(?:^|[^A-Za-z0-9_$])(__proto__|constructor|prototype)(?![A-Za-z0-9_$])/;
const VAR_EXPR = /^vars\.([A-Za-z_][A-Za-z0-9_-]{0,63})$/;
const HOST_EXPR = /^hosts\.([A-Za-z_][A-Za-z0-9_-]{0,63})\[([0-9]{1,6})\]\.(address|name|labels\.([A-Za-z0-9_./-]{1,253}))$/;
const LITERAL_EXPR = /^(?:'([^']*)'|"([^"]*)")$/;

const GRAMMAR_HINT =
  "expected {{ vars.NAME }}, {{ hosts.GROUP[i].address }}, {{ hosts.GROUP[i].name }} or {{ hosts.GROUP[i].labels.KEY }}";

/** Parses the inside of one `{{ ... }}` (without the braces). */
function parseExpression(body: string): { expr: TemplateExpr } | { error: string } {
  const text = body.trim();
  const literal = LITERAL_EXPR.exec(text);
  if (literal) return { expr: { kind: 'literal', text: literal[1] ?? literal[2] ?? '' } };
  const reserved = RESERVED.exec(text);
  if (reserved) return { error: `'${reserved[1]}' is not allowed in a template` };
  const v = VAR_EXPR.exec(text);
  if (v) return { expr: { kind: 'var', name: v[1]! } };
  const h = HOST_EXPR.exec(text);
  if (h) {
    const group = h[1]!;
    const index = Number(h[2]);
    const label = h[4];
    if (label !== undefined) return { expr: { kind: 'host', group, index, field: 'label', label } };
    return { expr: { kind: 'host', group, index, field: h[3] as 'address' | 'name' } };
  }
  if (text === '') return { error: `empty template; ${GRAMMAR_HINT}` };
  if (text.startsWith('hosts.')) return { error: 'host templates have the form {{ hosts.GROUP[i].address }}, {{ hosts.GROUP[i].name }} or {{ hosts.GROUP[i].labels.KEY }} (i counts from 0)' };
  if (text.startsWith('vars.')) return { error: 'a var name has letters, digits, _ and -, starting with a letter or _' };
  return { error: `unsupported expression; ${GRAMMAR_HINT}` };
}

/**
 * Finds every `{{ ... }}` in `s`, in order. An expression ends at the first `}}` after its `{{`;
 * a `{{` with no `}}` after it yields one token with an error. Text without `{{` yields `[]`.
 */
export function scanTemplates(s: string): TemplateToken[] {
  const tokens: TemplateToken[] = [];
  let from = 0;
  for (;;) {
    const start = s.indexOf('{{', from);
    if (start < 0) return tokens;
    const close = s.indexOf('}}', start + 2);
    if (close < 0) {
      tokens.push({ start, end: s.length, raw: s.slice(start), error: "this '{{' has no matching '}}'" });
      return tokens;
    }
    const end = close + 2;
    const parsed = parseExpression(s.slice(start + 2, close));
    tokens.push({ start, end, raw: s.slice(start, end), ...parsed });
    from = end;
  }
}

/** Escapes text so that rendering it as a template yields it unchanged. */
export function escapeTemplateText(text: string): string {
  return text.replaceAll('{{', "{{ '{{' }}");
}

function fail(raw: string, why: string): never {
  throw new BoltError('BOLT_ERR_JOB_TEMPLATE', `cannot resolve ${raw}: ${why}`, { details: { expression: raw } });
}

function resolve(token: TemplateToken, ctx: TemplateContext): string {
  const { expr, raw } = token;
  if (!expr) return fail(raw, token.error ?? 'unsupported expression');
  switch (expr.kind) {
    case 'literal':
      return expr.text;
    case 'var':
      if (!Object.hasOwn(ctx.vars, expr.name)) return fail(raw, `no var '${expr.name}' is defined`);
      return String(ctx.vars[expr.name]);
    case 'host': {
      if (!Object.hasOwn(ctx.hosts, expr.group)) return fail(raw, `no group '${expr.group}'`);
      const hosts = ctx.hosts[expr.group]!;
      const host = hosts[expr.index];
      if (!host) return fail(raw, `group '${expr.group}' has ${hosts.length} host${hosts.length === 1 ? '' : 's'} (indexes start at 0)`);
      if (expr.field !== 'label') return String(host[expr.field]);
      if (!Object.hasOwn(host.labels, expr.label)) return fail(raw, `host '${host.name}' has no label '${expr.label}'`);
      return String(host.labels[expr.label]);
    }
  }
}

function renderString(s: string, ctx: TemplateContext): string {
  const tokens = scanTemplates(s);
  if (tokens.length === 0) return s;
  let out = '';
  let at = 0;
  for (const token of tokens) {
    out += s.slice(at, token.start) + resolve(token, ctx);
    at = token.end;
  }
  return out + s.slice(at);
}

/**
 * Substitutes every template in the strings of `value`, walking arrays and plain objects; other
 * values are returned as they are. Returns a new structure; `value` is not modified. Object keys are
 * not templated. Throws a BoltError `BOLT_ERR_JOB_TEMPLATE` naming the first expression that cannot
 * be resolved (undefined var, unknown group, index out of range, missing label, not in the grammar).
 */
export function renderTemplate(value: unknown, ctx: TemplateContext): unknown {
  if (typeof value === 'string') return renderString(value, ctx);
  if (Array.isArray(value)) return value.map((item) => renderTemplate(item, ctx));
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renderTemplate(v, ctx)]));
  }
  return value;
}
