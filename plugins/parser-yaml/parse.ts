/**
 * Parses a job file (YAML, or JSON when the file name ends in `.json`) into a NormalizedJob, or into
 * a list of issues that each name the file, line, column and JSON pointer of the problem.
 *
 * Stages, each reporting every issue it finds:
 *  1. syntax: YAML (first error only; later ones are usually its echoes) or strict JSON;
 *  2. `{{ vars.NAME }}` substitution in string values (CLI vars override file vars);
 *  3. the job JSON Schema (ajv, compiled once), errors mapped back to YAML nodes;
 *  4. only when 1-3 found nothing: references between tasks, groups and actions, dependency
 *     cycles, duration ranges, the cron expression and host templates.
 * A job is returned only when there are no issues.
 */
import { Ajv, type ErrorObject } from 'ajv';
import { validateDetailed } from 'node-cron';
import { LineCounter, isAlias, isMap, isScalar, isSeq, parseDocument, visit, type Document } from 'yaml';
import type { ErrorCode } from 'bolt-plugin-sdk';
import {
  DEFAULT_METRICS, NAME_PATTERN, RESERVED_NAMES, jobSchema, parseDuration,
  type HostShare, type JobSpec, type MetricsSpec, type NormalizedJob, type NormalizedMetrics, type NormalizedTask,
} from '../../plugin-sdk/src/schemas/job.ts';
import type { JobIssue } from './issues.ts';
import { escapeTemplateText, scanTemplates, type TemplateExpr } from './template.ts';

export { formatIssue, type JobIssue } from './issues.ts';

export interface ParseResult {
  /** Present exactly when `issues` is empty. */
  job?: NormalizedJob;
  /** Sorted by line, then column. */
  issues: JobIssue[];
}

export interface ParseOptions {
  /** Shown in issues; a name ending in `.json` (any case) selects strict JSON syntax. */
  file: string;
  /** `--var NAME=VALUE` from the command line; override the file's vars. */
  vars?: Record<string, string>;
  /** When given, a task whose action is not in this list is an error. */
  knownActions?: string[];
}

/** Longest duration a Node.js timer can wait. */
const MAX_DURATION_MS = 2_147_483_647;
const NAME = new RegExp(NAME_PATTERN);
const RESERVED: ReadonlySet<string> = new Set(RESERVED_NAMES);

const ajv = new Ajv({ allErrors: true, allowUnionTypes: true, strict: true });
const validateSchema = ajv.compile<JobSpec>(jobSchema);

type Segment = string | number;

/** A `{{ hosts... }}` expression found in a task's `with`, checked once the groups are known valid. */
interface HostRef {
  path: Segment[];
  raw: string;
  /** Which occurrence of `raw` in its string (0 = first), to find its column. */
  nth: number;
  expr: Extract<TemplateExpr, { kind: 'host' }>;
}

/** Shared state of one parse. */
class Session {
  readonly file: string;
  readonly text: string;
  readonly lines = new LineCounter();
  readonly issues: JobIssue[] = [];
  private parsedDoc: Document | undefined;

  constructor(text: string, file: string) {
    this.text = text;
    this.file = file;
    this.lines.addNewLine(0);
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) this.lines.addNewLine(i + 1);
  }

  /** The YAML document, parsed on first use (a JSON file is read with JSON.parse and needs it only to place issues). */
  get doc(): Document {
    this.parsedDoc ??= parseDocument(this.text, { prettyErrors: false, uniqueKeys: true, merge: true });
    return this.parsedDoc;
  }

  add(code: ErrorCode, message: string, path: Segment[], offset: number): void {
    const { line, col } = this.lines.linePos(offset);
    this.issues.push({ code, message, file: this.file, line, column: col, path: pointer(path) });
  }

  /** Reports at the value at `path` (or at its key when the value is empty, or the nearest existing ancestor). */
  atValue(code: ErrorCode, message: string, path: Segment[]): void {
    this.add(code, message, path, this.offsetOf(path, 'value'));
  }

  /** Reports at the key of the last segment of `path` (an item's start for list items). */
  atKey(code: ErrorCode, message: string, path: Segment[]): void {
    this.add(code, message, path, this.offsetOf(path, 'key'));
  }

  offsetOf(path: Segment[], target: 'key' | 'value'): number {
    return this.locate(path, target).start;
  }

  /**
   * Source range of the node at `path`: its value (or its key when the value is empty), or with
   * `target: 'key'` its key. Falls back to the nearest ancestor that exists in the document.
   */
  locate(path: Segment[], target: 'key' | 'value'): { start: number; end: number } {
    const doc = this.doc;
    let node: unknown = doc.contents;
    let found = rangeOf(node) ?? { start: 0, end: 0 };
    for (const seg of path) {
      if (isAlias(node)) node = node.resolve(doc);
      let key: unknown = null;
      if (isMap(node)) {
        const pair = node.items.findLast((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(seg));
        if (!pair) return found;
        key = pair.key;
        node = pair.value;
      } else if (isSeq(node)) {
        node = node.items[Number(seg)];
        if (node === undefined) return found;
      } else {
        return found;
      }
      const keyRange = rangeOf(key);
      const valueRange = isScalar(node) && node.value === null && node.source === '' ? undefined : rangeOf(node);
      found = (target === 'key' ? keyRange ?? valueRange : valueRange ?? keyRange) ?? found;
    }
    return found;
  }
}

function rangeOf(node: unknown): { start: number; end: number } | undefined {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? { start: range[0], end: range[1] } : undefined;
}

function pointer(path: Segment[]): string {
  return path.map((s) => '/' + String(s).replaceAll('~', '~0').replaceAll('/', '~1')).join('');
}

/** A value as a message shows it: short, on one line. */
function show(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'number') return `the number ${value}`;
  return String(value);
}

function quote(s: string): string {
  const oneLine = s.replace(/\r?\n/g, '\\n');
  return `'${oneLine.length > 60 ? oneLine.slice(0, 57) + '...' : oneLine}'`;
}

function list(names: readonly string[]): string {
  return names.length === 0 ? '(none)' : names.join(', ');
}

/** Optimal string alignment distance (Levenshtein plus adjacent transpositions). */
function distance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/** The candidate closest to `word`, if it is within a third of the word's length (at least 1 edit). */
function closest(word: string, candidates: readonly string[]): string | undefined {
  if (word.length > 64) return undefined;
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const dist = distance(w, c.toLowerCase());
    if (dist < bestDistance) {
      best = c;
      bestDistance = dist;
    }
  }
  return best;
}

/** " (did you mean 'x'?)" for the closest candidate, else "". */
function suggest(word: string, candidates: readonly string[]): string {
  const best = closest(word, candidates);
  return best === undefined ? '' : ` (did you mean '${best}'?)`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// ---------------------------------------------------------------- stage 1: syntax

/** Plainer wording for the yaml package's error codes; other errors keep the package's message. */
const YAML_MESSAGES: Record<string, string> = {
  TAB_AS_INDENT: 'a tab is used for indentation; YAML indents with spaces only',
  MULTIPLE_DOCS: "the file holds more than one YAML document ('---'); a job file holds exactly one",
  MULTILINE_IMPLICIT_KEY: 'a key must fit on one line (is the line above indented too far, or missing a colon?)',
  BLOCK_AS_IMPLICIT_KEY: 'a nested mapping cannot start here (is the next line indented too far?)',
};

function checkYamlSyntax(s: Session): boolean {
  const first = s.doc.errors[0];
  if (!first) return true;
  let offset = first.pos[0];
  let message: string;
  const quoteChar = first.code === 'MISSING_CHAR' ? /closing (["'])quote/.exec(first.message)?.[1] : undefined;
  if (quoteChar) {
    const openedAt = findOpenQuote(s.doc, offset);
    const runsTo = s.text.slice(offset).trim() === '' ? 'the end of the file' : `line ${s.lines.linePos(offset).line}`;
    if (openedAt !== undefined) offset = openedAt;
    message = `${quoteChar === '"' ? 'double' : 'single'} quote is never closed (the string runs on to ${runsTo})`;
  } else if (first.code === 'DUPLICATE_KEY') {
    const key = /^[^\s:]+/.exec(s.text.slice(offset))?.[0] ?? '';
    message = `duplicate key ${quote(key)}: a key may appear only once in a mapping`;
  } else if (first.code === 'BAD_INDENT' && first.message.startsWith('All mapping items')) {
    while (s.text[offset] === ' ') offset++;
    message = 'bad indentation: this key does not line up with the keys above it';
  } else if (first.code === 'BAD_INDENT' && /^Flow (sequence|map)/.test(first.message)) {
    const [open, close] = first.message.startsWith('Flow sequence') ? ['[', ']'] : ['{', '}'];
    message = `a '${open}' is not closed with '${close}' before this line (or this line is not indented enough to continue it)`;
  } else {
    const yamlText = first.message.replace(/\s+/g, ' ').replace(/\.$/, '');
    message = YAML_MESSAGES[first.code] ?? (first.code === 'BAD_INDENT' ? `bad indentation: ${yamlText}` : yamlText);
  }
  s.add('BOLT_ERR_JOB_SYNTAX', `YAML syntax error: ${message}`, [], offset);
  return false;
}

/** Start of the first alias `*name` in the document (0 when not found). */
function aliasOffset(doc: Document, name: string): number {
  let found: number | undefined;
  visit(doc, { Alias(_, node) { if (node.source === name) { found = node.range?.[0]; return visit.BREAK; } return undefined; } });
  return found ?? 0;
}

/** Start of the quoted scalar that an unclosed-quote error at `offset` belongs to. */
function findOpenQuote(doc: Document, offset: number): number | undefined {
  let found: number | undefined;
  visit(doc, {
    Scalar(_, node) {
      if ((node.type !== 'QUOTE_DOUBLE' && node.type !== 'QUOTE_SINGLE') || node.range?.[1] !== offset) return undefined;
      found = node.range[0];
      return visit.BREAK;
    },
  });
  return found;
}

const JSON_LITERAL = /true|false|null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

/**
 * Strict JSON (RFC 8259) check that reports where the first error is; the YAML parser alone would
 * accept trailing commas, comments and single quotes, and JSON.parse would silently keep the last of
 * two equal keys. Returns undefined when `text` is valid.
 */
function findJsonError(text: string): { offset: number; message: string } | undefined {
  let i = text.startsWith('\uFEFF') ? 1 : 0;
  const ws = (): void => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++; };
  const fail = (message: string, at = i): never => { throw { offset: at, message }; };
  const unexpected = (expected: string): never =>
    i >= text.length ? fail(`unexpected end of file; expected ${expected}`) : fail(`unexpected ${quote(text[i]!)}; expected ${expected}`);
  /** Reads a string and returns its source text, quotes included. */
  const string = (): string => {
    const start = i++;
    while (i < text.length && text[i] !== '"') {
      const c = text.charCodeAt(i);
      if (c < 0x20) fail('a control character (such as a line break) inside a string; write it as an escape like \\n');
      if (text[i] === '\\') {
        i++;
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail('bad \\u escape; expected 4 hex digits');
          i += 4;
        } else if (i >= text.length || !'"\\/bfnrt'.includes(text[i]!)) fail(`bad escape '\\${text[i] ?? ''}'`);
      }
      i++;
    }
    if (i >= text.length) fail('string is never closed with a double quote', start);
    i++;
    return text.slice(start, i);
  };
  const value = (depth: number): void => {
    if (depth > 500) fail('nesting deeper than 500 levels');
    ws();
    const c = text[i];
    if (c === '{') {
      i++; ws();
      if (text[i] === '}') { i++; return; }
      const keys = new Set<string>();
      for (;;) {
        ws();
        if (text[i] !== '"') unexpected(text[i] === '}' ? 'another property after the comma (trailing commas are not allowed in JSON)' : 'a property name in double quotes');
        const keyAt = i;
        const key = JSON.parse(string()) as string;
        if (keys.has(key)) fail(`duplicate key ${quote(key)}: a key may appear only once in an object`, keyAt);
        keys.add(key);
        ws();
        if (text[i] !== ':') unexpected("':' after the property name");
        i++;
        value(depth + 1); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return; }
        unexpected("',' or '}'");
      }
    }
    if (c === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return; }
      for (;;) {
        ws();
        if (text[i] === ']') unexpected('another value after the comma (trailing commas are not allowed in JSON)');
        value(depth + 1); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return; }
        unexpected("',' or ']'");
      }
    }
    if (c === '"') { string(); return; }
    JSON_LITERAL.lastIndex = i;
    const literal = JSON_LITERAL.exec(text);
    if (literal) { i += literal[0].length; return; }
    unexpected('a value (string in double quotes, number, true, false, null, object or array)');
  };
  try {
    value(0); ws();
    if (i < text.length) unexpected('the end of the file after the JSON value');
    return undefined;
  } catch (e) {
    if (e instanceof Error) throw e;
    return e as { offset: number; message: string };
  }
}

// ---------------------------------------------------------------- stage 2: vars

type VarValue = string | number | boolean;

/** The effective vars: the file's valid ones, overridden by CLI vars (coerced to the file's type). */
function effectiveVars(s: Session, raw: unknown, cli: Record<string, string>): { vars: Map<string, VarValue>; declared: Set<string> } {
  const vars = new Map<string, VarValue>();
  const declared = new Set<string>();
  const fileVars = isRecord(raw) && isRecord(raw['vars']) ? raw['vars'] : {};
  for (const [name, value] of Object.entries(fileVars)) {
    declared.add(name);
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') vars.set(name, value);
  }
  for (const [name, text] of Object.entries(cli)) {
    // Not in the file, so reported at line 0.
    const refuse = (why: string): void => {
      s.issues.push({ code: 'BOLT_ERR_JOB_BAD_VAR', message: `${quote(`--var ${name}=${text}`)}: ${why}`, file: s.file, line: 0, column: 0, path: pointer(['vars', name]) });
    };
    if (!NAME.test(name) || RESERVED.has(name)) {
      refuse(`${quote(name)} is not a var name (letters, digits, _ and -, starting with a letter or _)`);
      continue;
    }
    const declaredValue = vars.get(name);
    let value: VarValue = text;
    if (typeof declaredValue === 'number') {
      value = text.trim() === '' ? NaN : Number(text);
      if (!Number.isFinite(value)) {
        refuse(`the job file gives '${name}' a number (${declaredValue}), so --var must be a number too`);
        continue;
      }
    } else if (typeof declaredValue === 'boolean') {
      if (text !== 'true' && text !== 'false') {
        refuse(`the job file gives '${name}' a boolean (${declaredValue}), so --var must be true or false`);
        continue;
      }
      value = text === 'true';
    }
    vars.set(name, value);
    declared.add(name);
  }
  return { vars, declared };
}

/** Offset of the `nth` occurrence of `raw` in the source of the scalar at `path`, else the scalar's start. */
function templateOffset(s: Session, path: Segment[], raw: string, nth: number): number {
  const { start, end } = s.locate(path, 'value');
  const source = s.text.slice(start, end);
  let at = -1;
  for (let k = 0; k <= nth; k++) {
    at = source.indexOf(raw, at + 1);
    if (at < 0) return start;
  }
  return start + at;
}

/**
 * Returns a copy of `root` with `{{ vars.NAME }}` and literals substituted in every string value
 * except those under `vars` and top-level `x-` keys. A string that is exactly one var template takes
 * the var's value with its type. Inside a task's `with`, host templates and literals are kept for
 * dispatch and substituted var text is escaped so it stays literal there; elsewhere host templates
 * are errors. Also returns the host templates found, and the paths whose templates failed (to
 * silence their echoes in later stages).
 */
function substituteVars(s: Session, root: unknown, vars: Map<string, VarValue>, declared: Set<string>): { root: unknown; hostRefs: HostRef[]; failed: Set<string> } {
  const hostRefs: HostRef[] = [];
  const failed = new Set<string>();
  const templateIssue = (path: Segment[], raw: string, nth: number, message: string): void => {
    failed.add(pointer(path));
    s.add('BOLT_ERR_JOB_TEMPLATE', message, path, templateOffset(s, path, raw, nth));
  };
  const renderString = (str: string, path: Segment[], inWith: boolean): VarValue => {
    const tokens = scanTemplates(str);
    if (tokens.length === 0) return str;
    const seen = new Map<string, number>();
    let out = '';
    let at = 0;
    for (const token of tokens) {
      const nth = seen.get(token.raw) ?? 0;
      seen.set(token.raw, nth + 1);
      let piece: string = token.raw;
      const expr = token.expr;
      if (!expr) {
        templateIssue(path, token.raw, nth, token.raw.endsWith('}}') ? `${token.raw}: ${token.error}` : `${quote(token.raw)}: ${token.error}`);
      } else if (expr.kind === 'var') {
        const value = vars.get(expr.name);
        if (value === undefined) {
          if (!declared.has(expr.name)) {
            const known = [...vars.keys()];
            templateIssue(path, token.raw, nth, `${token.raw}: no var '${expr.name}' is defined${suggest(expr.name, known)}; define it under vars: or pass --var ${expr.name}=VALUE`);
          } else {
            failed.add(pointer(path));
          }
        } else if (tokens.length === 1 && token.raw === str) {
          return inWith && typeof value === 'string' ? escapeTemplateText(value) : value;
        } else {
          piece = inWith ? escapeTemplateText(String(value)) : String(value);
        }
      } else if (expr.kind === 'literal') {
        if (!inWith) piece = expr.text;
      } else if (inWith) {
        hostRefs.push({ path, raw: token.raw, expr, nth });
      } else {
        templateIssue(path, token.raw, nth, `${token.raw}: host templates are filled in when a task is dispatched, so they may only be used inside a task's with:`);
      }
      out += str.slice(at, token.start) + piece;
      at = token.end;
    }
    return out + str.slice(at);
  };
  // Builds a new tree: YAML aliases can make one object appear at several paths, each substituted on its own.
  const walk = (value: unknown, path: Segment[], inWith: boolean): unknown => {
    if (typeof value === 'string') return renderString(value, path, inWith);
    if (Array.isArray(value)) return value.map((item, i) => walk(item, [...path, i], inWith));
    if (!isRecord(value)) return value;
    return Object.fromEntries(Object.entries(value).map(([key, child]) => {
      if (path.length === 0 && (key === 'vars' || key.startsWith('x-'))) return [key, child];
      const childInWith = inWith || (path.length === 2 && path[0] === 'tasks' && key === 'with');
      return [key, walk(child, [...path, key], childInWith)];
    }));
  };
  const substituted = walk(root, [], false);
  return { root: substituted, hostRefs, failed };
}

// ---------------------------------------------------------------- stage 3: schema

type SchemaNode = Record<string, unknown>;

/** The schema that applies at an instance path, with the name of the last definition passed through. */
function schemaAt(path: Segment[]): { schema: SchemaNode; def?: string } {
  let schema = jobSchema as unknown as SchemaNode;
  let def: string | undefined;
  const deref = (): void => {
    const ref = schema['$ref'];
    if (typeof ref === 'string') {
      def = ref.slice('#/definitions/'.length);
      schema = (jobSchema.definitions as unknown as Record<string, SchemaNode>)[def]!;
    }
  };
  deref();
  for (const seg of path) {
    const props = schema['properties'] as Record<string, SchemaNode> | undefined;
    const next = typeof seg === 'string' && props && Object.hasOwn(props, seg)
      ? props[seg]
      : typeof seg === 'number' && isRecord(schema['items']) ? schema['items'] as SchemaNode
      : isRecord(schema['additionalProperties']) ? schema['additionalProperties'] as SchemaNode : undefined;
    if (!next) return { schema: {}, def };
    schema = next;
    def = undefined;
    deref();
  }
  return { schema, def };
}

function parseInstancePath(instancePath: string): Segment[] {
  if (instancePath === '') return [];
  return instancePath.slice(1).split('/').map((s) => {
    const seg = s.replaceAll('~1', '/').replaceAll('~0', '~');
    return /^(0|[1-9][0-9]*)$/.test(seg) ? Number(seg) : seg;
  });
}

/** How a message names the thing at `path`: "the job", "task 'hammer'", "'failure.maxFailedHosts' of task 'hammer'". */
function subject(path: Segment[], root: unknown): string {
  const dotted = (segs: Segment[]): string => segs.map((s, i) => (typeof s === 'number' ? `[${s}]` : i === 0 ? s : `.${s}`)).join('');
  let owner: string | undefined;
  let rest = path;
  if (path[0] === 'tasks' && typeof path[1] === 'number') {
    const task = isRecord(root) && Array.isArray(root['tasks']) ? root['tasks'][path[1]] : undefined;
    const id = isRecord(task) && typeof task['id'] === 'string' && task['id'] !== '' ? task['id'] : undefined;
    owner = id !== undefined ? `task '${id}'` : `task #${path[1] + 1}`;
    rest = path.slice(2);
    if (rest.length === 1 && rest[0] === 'id') return `the id of task #${path[1] + 1}`;
  } else if (path[0] === 'groups' && path.length >= 2) {
    owner = `group '${path[1]}'`;
    rest = path.slice(2);
  } else if (path[0] === 'vars' && path.length === 2) {
    return `var '${path[1]}'`;
  }
  if (rest.length === 0) return owner ?? 'the job';
  return `'${dotted(rest)}'${owner ? ` of ${owner}` : ''}`;
}

const EXPECTED_BY_DEF: Record<string, string> = {
  duration: "a duration like '500ms', '30s', '5m', '1m30s' or a whole number of milliseconds",
  healthyShare: "a percentage like '100%' or a fraction from 0 to 1",
  hostShare: "a whole number of hosts or a percentage like '5%'",
  hostCount: "a whole number of hosts (at least 1) or 'all'",
  groupRefs: 'a group name or a list of group names',
  taskRefs: 'a task id or a list of task ids',
  name: 'a name',
  task: "a mapping (a task, starting with '- id: ...')",
};

const EXPECTED_BY_TYPE: Record<string, string> = {
  object: 'a mapping', array: 'a list', string: 'a string', integer: 'a whole number', number: 'a number', boolean: 'a boolean', null: 'nothing',
};

function expectedAt(path: Segment[], def: string | undefined, type: unknown): string {
  if (def && EXPECTED_BY_DEF[def]) return EXPECTED_BY_DEF[def];
  if (path.length === 1 && path[0] === 'tasks') return "a list of tasks (each starting with '- id: ...')";
  const types = Array.isArray(type) ? type : [type];
  const words = types.map((t) => EXPECTED_BY_TYPE[String(t)] ?? String(t));
  return words.length > 1 ? `${words.slice(0, -1).join(', ')} or ${words.at(-1)}` : words.join('');
}

function valueAt(root: unknown, path: Segment[]): unknown {
  let v = root;
  for (const seg of path) v = isRecord(v) || Array.isArray(v) ? (v as Record<string, unknown>)[seg as string] : undefined;
  return v;
}

function reportSchemaErrors(s: Session, root: unknown, errors: ErrorObject[], failed: Set<string>): void {
  const seen = new Set<string>();
  // A key reported as a misspelling of a required key is not reported again as missing.
  const misspelled = new Set<string>();
  for (const e of errors) {
    if (e.keyword !== 'additionalProperties') continue;
    const path = parseInstancePath(e.instancePath);
    const key = String((e.params as { additionalProperty: string }).additionalProperty);
    const allowed = Object.keys((schemaAt(path).schema['properties'] as Record<string, unknown> | undefined) ?? {});
    const meant = closest(key, allowed);
    if (meant !== undefined) misspelled.add(`${e.instancePath} ${meant}`);
  }
  for (const e of errors) {
    if (e.keyword === 'propertyNames') continue;
    const path = parseInstancePath(e.instancePath);
    const ptr = pointer(path);
    if ([...failed].some((f) => ptr === f || ptr.startsWith(f + '/'))) continue;
    const { def } = schemaAt(path);
    const value = valueAt(root, path);
    const what = subject(path, root);
    const propertyName = (e as ErrorObject & { propertyName?: string }).propertyName;
    if (propertyName !== undefined) {
      const keyPath = [...path, propertyName];
      const kind = path[0] === 'groups' ? 'group name' : path[0] === 'vars' ? 'var name' : 'name';
      const why = e.keyword === 'not'
        ? `'${propertyName}' is reserved`
        : 'use letters, digits, _ and -, starting with a letter or _, at most 64 characters';
      emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${quote(propertyName)} is not a valid ${kind}: ${why}`, keyPath, 'key');
      continue;
    }
    switch (e.keyword) {
      case 'additionalProperties': {
        const key = String((e.params as { additionalProperty: string }).additionalProperty);
        const allowed = Object.keys((schemaAt(path).schema['properties'] as Record<string, unknown> | undefined) ?? {});
        emit(s, seen, 'BOLT_ERR_JOB_UNKNOWN_KEY', `unknown key ${quote(key)} in ${what}${suggest(key, allowed)}; expected one of: ${list(allowed)}`, [...path, key], 'key');
        break;
      }
      case 'required': {
        const key = (e.params as { missingProperty: string }).missingProperty;
        if (misspelled.has(`${e.instancePath} ${key}`)) break;
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} is missing the required key '${key}'`, path, 'value');
        break;
      }
      case 'type': {
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must be ${expectedAt(path, def, e.params['type'])}, found ${show(value)}`, path, 'value');
        break;
      }
      case 'enum': {
        const allowed = (e.params as { allowedValues: unknown[] }).allowedValues.map(String);
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must be one of: ${list(allowed)}; found ${show(value)}${typeof value === 'string' ? suggest(value, allowed) : ''}`, path, 'value');
        break;
      }
      case 'minItems':
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} is an empty list; ${path.length === 1 ? 'a job needs at least one task' : 'name at least one group'}`, path, 'value');
        break;
      case 'uniqueItems': {
        const { i, j } = e.params as { i: number; j: number };
        const later = Math.max(i, j);
        const item = valueAt(root, [...path, later]);
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} lists ${show(item)} twice`, [...path, later], 'value');
        break;
      }
      case 'minLength':
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must not be empty`, path, 'value');
        break;
      case 'maxLength':
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} is longer than ${String(e.params['limit'])} characters`, path, 'value');
        break;
      case 'not':
      case 'pattern':
      case 'minimum':
      case 'maximum':
      case 'multipleOf':
        reportValueForm(s, seen, e, def, path, value, what);
        break;
      default:
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} is not valid here (${e.keyword} check failed)`, path, 'value');
    }
  }
}

function reportValueForm(s: Session, seen: Set<string>, e: ErrorObject, def: string | undefined, path: Segment[], value: unknown, what: string): void {
  const found = show(value);
  switch (def) {
    case 'duration':
      emit(s, seen, 'BOLT_ERR_JOB_BAD_DURATION', `${what} is not a valid duration: ${found}; write it like '500ms', '30s', '5m', '1h', '1m30s' or as a whole number of milliseconds`, path, 'value');
      return;
    case 'healthyShare':
      emit(s, seen, 'BOLT_ERR_JOB_BAD_PERCENT', `${what} must be a percentage from 0% to 100% or a fraction from 0 to 1, found ${found}`, path, 'value');
      return;
    case 'hostShare':
      emit(s, seen, 'BOLT_ERR_JOB_BAD_PERCENT', `${what} must be a whole number of hosts (0 or more) or a percentage from 0% to 100%, found ${found}`, path, 'value');
      return;
    case 'hostCount':
      emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must be a whole number of hosts (at least 1) or 'all', found ${found}`, path, 'value');
      return;
    case 'name':
      if (e.keyword === 'not') {
        emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} is ${found}, a reserved word that cannot be used as a name`, path, 'value');
        return;
      }
      emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must be a name of letters, digits, _ and -, starting with a letter or _ (at most 64 characters), found ${found}`, path, 'value');
      return;
    default: {
      const limit = String(e.params['limit']);
      const bound = e.keyword === 'minimum' ? `at least ${limit}` : e.keyword === 'maximum' ? `at most ${limit}` : 'valid';
      emit(s, seen, 'BOLT_ERR_JOB_SCHEMA', `${what} must be ${bound}, found ${found}`, path, 'value');
    }
  }
}

/** Adds an issue once per (code, path): allErrors can report one value under several keywords. */
function emit(s: Session, seen: Set<string>, code: ErrorCode, message: string, path: Segment[], at: 'key' | 'value'): void {
  const id = `${code} ${pointer(path)} ${at}`;
  if (seen.has(id)) return;
  seen.add(id);
  if (at === 'key') s.atKey(code, message, path);
  else s.atValue(code, message, path);
}

// ---------------------------------------------------------------- stage 4: semantics

/** Milliseconds of a duration the schema accepted (see the duration forms in job.ts). */
function checkDuration(s: Session, value: string | number | undefined, path: Segment[], what: string): number | null {
  if (value === undefined) return null;
  // The schema has already accepted the form, so this is never null here.
  const ms = parseDuration(value) ?? 0;
  if (ms <= 0) s.atValue('BOLT_ERR_JOB_BAD_DURATION', `${what} must be longer than zero, found ${show(value)}`, path);
  else if (ms > MAX_DURATION_MS) s.atValue('BOLT_ERR_JOB_BAD_DURATION', `${what} is ${show(value)} = ${ms} ms, longer than the ${MAX_DURATION_MS} ms (24.8 days) a timer can wait`, path);
  return ms;
}

function checkCron(s: Session, expr: string): void {
  const result = validateDetailed(expr);
  if (result.valid) return;
  const why = result.errors.map((e) => (e.field === 'expression' ? e.message : `the ${e.field} field ${quote(String(e.value))} is out of range or malformed`)).join('; ');
  s.atValue('BOLT_ERR_JOB_BAD_CRON', `schedule ${quote(expr)} is not a valid cron expression: ${why}; expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. '0 2 * * *'`, ['schedule']);
}

function refs(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : typeof v === 'string' ? [v] : v;
}

/** A task as the cycle check sees it: its valid needs, each with the path of the entry that names it. */
interface GraphTask {
  id: string;
  index: number;
  needs: Array<{ id: string; path: Segment[] }>;
}

/** Strongly connected components of the needs graph: Tarjan's algorithm, iterative so a long chain of tasks cannot overflow the stack. */
function components(tasks: GraphTask[], byId: Map<string, GraphTask>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  for (const root of tasks) {
    if (index.has(root.id)) continue;
    // Each frame is a task and how many of its needs have been followed.
    const frames: Array<{ id: string; next: number }> = [{ id: root.id, next: 0 }];
    index.set(root.id, counter);
    low.set(root.id, counter++);
    stack.push(root.id);
    onStack.add(root.id);
    while (frames.length > 0) {
      const frame = frames[frames.length - 1]!;
      const needs = byId.get(frame.id)!.needs;
      if (frame.next < needs.length) {
        const n = needs[frame.next++]!.id;
        if (!index.has(n)) {
          index.set(n, counter);
          low.set(n, counter++);
          stack.push(n);
          onStack.add(n);
          frames.push({ id: n, next: 0 });
        } else if (onStack.has(n)) {
          low.set(frame.id, Math.min(low.get(frame.id)!, index.get(n)!));
        }
        continue;
      }
      frames.pop();
      const parent = frames[frames.length - 1];
      if (parent) low.set(parent.id, Math.min(low.get(parent.id)!, low.get(frame.id)!));
      if (low.get(frame.id) === index.get(frame.id)) {
        const component: string[] = [];
        let member: string;
        do {
          member = stack.pop()!;
          onStack.delete(member);
          component.push(member);
        } while (member !== frame.id);
        found.push(component);
      }
    }
  }
  return found;
}

/**
 * Reports one cycle per strongly connected component of the needs graph, named from the component's
 * first task in file order and shortest, at the needs entry of that task that starts the cycle.
 * Returns true when there is no cycle.
 */
function checkCycles(s: Session, tasks: GraphTask[]): boolean {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const cycles: Array<{ first: number; message: string; path: Segment[] }> = [];
  for (const component of components(tasks, byId)) {
    const members = new Set(component);
    const first = component.map((id) => byId.get(id)!).reduce((a, b) => (b.index < a.index ? b : a));
    const self = first.needs.find((n) => n.id === first.id);
    if (self) {
      cycles.push({ first: first.index, message: `task '${first.id}' needs itself (dependency cycle: ${first.id} -> ${first.id})`, path: self.path });
      continue;
    }
    if (component.length === 1) continue;
    // Breadth-first search for the shortest way back to `first` inside the component.
    const previous = new Map<string, string>();
    const queue = [first.id];
    let closing: string | undefined;
    search: for (let head = 0; head < queue.length; head++) {
      const id = queue[head]!;
      for (const n of byId.get(id)!.needs) {
        if (!members.has(n.id)) continue;
        if (n.id === first.id) { closing = id; break search; }
        if (!previous.has(n.id)) { previous.set(n.id, id); queue.push(n.id); }
      }
    }
    const chain = [first.id];
    for (let at = closing!; at !== first.id; at = previous.get(at)!) chain.splice(1, 0, at);
    const edge = first.needs.find((n) => n.id === chain[1])!;
    const named = chain.length <= 12 ? [...chain, first.id].join(' -> ') : `${chain.slice(0, 10).join(' -> ')} -> ... (${chain.length} tasks) -> ${first.id}`;
    cycles.push({ first: first.index, message: `dependency cycle: ${named} (each task needs the next, so none can start)`, path: edge.path });
  }
  for (const c of cycles.sort((a, b) => a.first - b.first)) s.atValue('BOLT_ERR_JOB_CYCLE', c.message, c.path);
  return cycles.length === 0;
}

/** Position of each task in a topological order of needs; among ready tasks the earliest in the file goes first (Kahn's algorithm). */
function topologicalOrder(tasks: Array<{ id: string; needs: string[] }>): Map<string, number> {
  const position = new Map(tasks.map((t, i) => [t.id, i]));
  const waitingFor = tasks.map((t) => new Set(t.needs).size);
  const dependents: number[][] = tasks.map(() => []);
  tasks.forEach((t, i) => { for (const n of new Set(t.needs)) dependents[position.get(n)!]!.push(i); });
  // Ready task indexes, kept sorted in descending order so the smallest is popped from the end.
  const ready = tasks.flatMap((_, i) => (waitingFor[i] === 0 ? [i] : [])).reverse();
  const order = new Map<string, number>();
  while (ready.length > 0) {
    const i = ready.pop()!;
    order.set(tasks[i]!.id, order.size);
    for (const d of dependents[i]!) {
      if (--waitingFor[d]! > 0) continue;
      let at = ready.length;
      while (at > 0 && ready[at - 1]! < d) at--;
      ready.splice(at, 0, d);
    }
  }
  return order;
}

function hostShare(v: string | number | undefined): HostShare {
  if (v === undefined) return { count: 0 };
  return typeof v === 'number' ? { count: v } : { percent: Number(v.slice(0, -1)) };
}

function checkSemantics(s: Session, spec: JobSpec, hostRefs: HostRef[], opts: ParseOptions, vars: Map<string, VarValue>): NormalizedJob | undefined {
  const groups = spec.groups ?? {};
  const groupNames = Object.keys(groups);
  const ids = spec.tasks.map((t) => t.id);
  const firstIndex = new Map<string, number>();
  spec.tasks.forEach((task, i) => {
    const earlier = firstIndex.get(task.id);
    if (earlier === undefined) firstIndex.set(task.id, i);
    else s.atValue('BOLT_ERR_JOB_DUPLICATE_TASK', `task id '${task.id}' is used twice (task #${earlier + 1} at line ${s.lines.linePos(s.offsetOf(['tasks', earlier, 'id'], 'value')).line} has it too); task ids must be unique`, ['tasks', i, 'id']);
  });

  const graph: GraphTask[] = [];
  spec.tasks.forEach((task, i) => {
    const hosts = refs(task.hosts);
    hosts.forEach((g, k) => {
      if (Object.hasOwn(groups, g)) return;
      const path: Segment[] = typeof task.hosts === 'string' ? ['tasks', i, 'hosts'] : ['tasks', i, 'hosts', k];
      s.atValue('BOLT_ERR_JOB_UNKNOWN_GROUP', `task '${task.id}' runs on group '${g}', which groups: does not define${suggest(g, groupNames)}; defined groups: ${list(groupNames)}`, path);
    });
    const needs: GraphTask['needs'] = [];
    refs(task.needs).forEach((n, k) => {
      const path: Segment[] = typeof task.needs === 'string' ? ['tasks', i, 'needs'] : ['tasks', i, 'needs', k];
      if (firstIndex.has(n)) needs.push({ id: n, path });
      else s.atValue('BOLT_ERR_JOB_UNKNOWN_TASK', `task '${task.id}' needs '${n}', which is not a task of this job${suggest(n, ids)}`, path);
    });
    if (firstIndex.get(task.id) === i) graph.push({ id: task.id, index: i, needs });
    if (opts.knownActions && !opts.knownActions.includes(task.action)) {
      s.atValue('BOLT_ERR_JOB_UNKNOWN_ACTION', `task '${task.id}' uses action '${task.action}', which no loaded plugin provides${suggest(task.action, opts.knownActions)}; known actions: ${list(opts.knownActions)}`, ['tasks', i, 'action']);
    }
  });
  const acyclic = checkCycles(s, graph);

  const metricsOf = (m: MetricsSpec | undefined, base: NormalizedMetrics, path: Segment[], what: string): NormalizedMetrics => ({
    intervalMs: m?.interval === undefined ? base.intervalMs : checkDuration(s, m.interval, [...path, 'interval'], what)!,
    collect: m?.collect ?? base.collect,
  });
  const jobMetrics = metricsOf(spec.metrics, DEFAULT_METRICS, ['metrics'], "'metrics.interval'");
  const tasks = spec.tasks.map((task, i): Omit<NormalizedTask, 'order'> => ({
    id: task.id,
    description: task.description ?? null,
    hosts: refs(task.hosts),
    needs: refs(task.needs),
    start: task.start ?? 'asap',
    action: task.action,
    with: task.with ?? {},
    timeoutMs: checkDuration(s, task.timeout, ['tasks', i, 'timeout'], `'timeout' of task '${task.id}'`),
    retries: task.retries ?? 0,
    failure: { maxFailedHosts: hostShare(task.failure?.maxFailedHosts) },
    metrics: metricsOf(task.metrics, jobMetrics, ['tasks', i, 'metrics'], `'metrics.interval' of task '${task.id}'`),
  }));

  for (const ref of hostRefs) {
    const { group, index } = ref.expr;
    const count = Object.hasOwn(groups, group) ? groups[group]!.count ?? 'all' : undefined;
    let message: string | undefined;
    if (count === undefined) message = `${ref.raw}: no group '${group}' is defined${suggest(group, groupNames)}; defined groups: ${list(groupNames)}`;
    else if (typeof count === 'number' && index >= count) message = `${ref.raw}: group '${group}' has count ${count}, so host indexes go from 0 to ${count - 1}`;
    if (message) s.add('BOLT_ERR_JOB_TEMPLATE', message, ref.path, templateOffset(s, ref.path, ref.raw, ref.nth));
  }

  if (spec.schedule !== undefined) checkCron(s, spec.schedule);
  if (s.issues.length > 0 || !acyclic) return undefined;

  const order = topologicalOrder(tasks);
  return {
    name: spec.name,
    description: spec.description ?? null,
    vars: Object.fromEntries([...vars].map(([k, v]) => [k, String(v)])),
    groups: Object.fromEntries(Object.entries(groups).map(([name, g]) => [name, {
      labels: Object.fromEntries(Object.entries(g.labels ?? {}).map(([k, v]) => [k, String(v)])),
      count: g.count ?? 'all',
    }])),
    require: {
      healthy: spec.require?.healthy === undefined ? 1
        : typeof spec.require.healthy === 'number' ? spec.require.healthy
        : Number((Number(spec.require.healthy.slice(0, -1)) / 100).toPrecision(12)),
    },
    metrics: jobMetrics,
    tasks: tasks.map((t) => ({ ...t, order: order.get(t.id)! })),
    schedule: spec.schedule ?? null,
  };
}

// ---------------------------------------------------------------- entry points

/**
 * Parses and validates a job file. Never throws for bad input: every problem becomes a JobIssue with
 * the file, a 1-based line and column, and a JSON pointer. Returns `job` only when there is no issue.
 * Pure and synchronous; safe to call from many worker threads at once.
 */
export function parseJob(text: string, opts: ParseOptions): ParseResult {
  const s = new Session(text, opts.file);
  const result = (): ParseResult => {
    s.issues.sort((a, b) => a.line - b.line || a.column - b.column);
    return { issues: s.issues };
  };
  if (text.trim() === '') {
    s.add('BOLT_ERR_JOB_EMPTY', `the job file is empty; a job needs at least 'name' and 'tasks'`, [], 0);
    return result();
  }
  let parsed: unknown;
  if (opts.file.toLowerCase().endsWith('.json')) {
    const jsonError = findJsonError(text);
    if (jsonError) {
      s.add('BOLT_ERR_JOB_SYNTAX', `JSON syntax error: ${jsonError.message}`, [], jsonError.offset);
      return result();
    }
    parsed = JSON.parse(text.startsWith('\uFEFF') ? text.slice(1) : text);
  } else {
    if (!checkYamlSyntax(s)) return result();
    if (s.doc.contents === null) {
      s.add('BOLT_ERR_JOB_EMPTY', `the job file holds only comments; a job needs at least 'name' and 'tasks'`, [], 0);
      return result();
    }
    try {
      parsed = s.doc.toJS({ maxAliasCount: 1000 });
    } catch (err) {
      const message = (err as Error).message.replace(/\s+/g, ' ');
      const alias = /^Unresolved alias.*: (\S+)$/.exec(message)?.[1];
      s.add('BOLT_ERR_JOB_SYNTAX', alias ? `YAML error: alias '*${alias}' refers to no anchor '&${alias}' defined above it` : `YAML error: ${message}`, [], alias ? aliasOffset(s.doc, alias) : 0);
      return result();
    }
  }

  const { vars, declared } = effectiveVars(s, parsed, opts.vars ?? {});
  const { root, hostRefs, failed } = substituteVars(s, parsed, vars, declared);
  if (!validateSchema(root)) reportSchemaErrors(s, root, validateSchema.errors ?? [], failed);
  if (s.issues.length > 0) return result();
  const job = checkSemantics(s, root as JobSpec, hostRefs, opts, vars);
  if (s.issues.length > 0 || !job) return result();
  return { job, issues: [] };
}
