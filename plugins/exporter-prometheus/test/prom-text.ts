/**
 * A strict parser of the Prometheus text exposition format 0.0.4, for tests: it throws on anything
 * a Prometheus server would refuse or that the format forbids (bad names, bad escapes, a family
 * split in two groups, TYPE after samples, duplicate series, histogram buckets that are not
 * cumulative or lack +Inf, negative counters).
 */

export interface PromSample {
  /** The sample's own name (e.g. `x_bucket` for a histogram family `x`). */
  name: string;
  labels: Record<string, string>;
  value: number;
  timestampMs?: number;
}

export interface PromFamily {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help?: string;
  samples: PromSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function fail(line: number, message: string, text: string): never {
  throw new Error(`line ${line}: ${message}: ${JSON.stringify(text.slice(0, 200))}`);
}

function parseValue(text: string, line: number, raw: string): number {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) fail(line, `bad value '${text}'`, raw);
  return Number(text);
}

/** The family a sample name belongs to, given the declared types. */
function familyOf(name: string, types: Map<string, string>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const type = types.get(base);
      if (type === 'histogram' || (type === 'summary' && suffix !== '_bucket')) return base;
    }
  }
  return name;
}

/** Parses the exposition text; throws an Error naming the line on any violation. */
export function parsePrometheusText(text: string): Map<string, PromFamily> {
  const families = new Map<string, PromFamily>();
  const types = new Map<string, string>();
  const closed = new Set<string>();
  const seriesSeen = new Set<string>();
  let current: string | null = null;
  if (text.length > 0 && !text.endsWith('\n')) fail(0, 'the text must end with a newline', text.slice(-50));
  const lines = text.split('\n');
  lines.pop();
  const family = (name: string, line: number, raw: string): PromFamily => {
    if (current !== name) {
      if (closed.has(name)) fail(line, `metric family ${name} appears in two separate groups`, raw);
      if (current !== null) closed.add(current);
      current = name;
    }
    let f = families.get(name);
    if (f === undefined) {
      f = { name, type: 'untyped', samples: [] };
      families.set(name, f);
    }
    return f;
  };
  lines.forEach((raw, i) => {
    const line = i + 1;
    if (raw.trim() === '') return;
    if (raw.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(raw);
      if (m === null) return; // a plain comment
      const [, keyword, name, rest] = m;
      if (!METRIC_NAME.test(name!)) fail(line, `bad metric name ${name}`, raw);
      if (keyword === 'TYPE') {
        if (!TYPES.has(rest ?? '')) fail(line, `unknown type '${rest}'`, raw);
        if (types.has(name!)) fail(line, `second TYPE for ${name}`, raw);
        if (families.get(name!)?.samples.length) fail(line, `TYPE for ${name} after its samples`, raw);
        types.set(name!, rest!);
        family(name!, line, raw).type = rest as PromFamily['type'];
      } else {
        const f = family(name!, line, raw);
        if (f.help !== undefined) fail(line, `second HELP for ${name}`, raw);
        const help = rest ?? '';
        if (help.replace(/\\[\\n]/g, '').includes('\\')) fail(line, 'bad escape in HELP', raw);
        f.help = help.replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
      }
      return;
    }
    const nameMatch = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(raw);
    if (nameMatch === null) fail(line, 'a sample must start with a metric name', raw);
    const name = nameMatch[1]!;
    let at = name.length;
    const labels: Record<string, string> = {};
    if (raw[at] === '{') {
      at++;
      while (raw[at] !== '}') {
        const l = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(raw.slice(at));
        if (l === null) fail(line, 'bad label', raw);
        const labelName = l[1]!;
        if (!LABEL_NAME.test(labelName) || labelName.startsWith('__')) fail(line, `bad label name ${labelName}`, raw);
        if (labelName in labels) fail(line, `label ${labelName} twice`, raw);
        at += l[0].length;
        let value = '';
        for (;;) {
          const c = raw[at];
          if (c === undefined) fail(line, 'unterminated label value', raw);
          if (c === '"') break;
          if (c === '\\') {
            const next = raw[at + 1];
            if (next === '\\') value += '\\';
            else if (next === '"') value += '"';
            else if (next === 'n') value += '\n';
            else fail(line, `bad escape \\${next}`, raw);
            at += 2;
            continue;
          }
          value += c;
          at++;
        }
        labels[labelName] = value;
        at++;
        if (raw[at] === ',') at++;
        else if (raw[at] !== '}') fail(line, 'expected , or } after a label', raw);
      }
      at++;
    }
    const rest = raw.slice(at);
    const parts = /^ (\S+)(?: (-?\d+))?$/.exec(rest);
    if (parts === null) fail(line, 'expected " value [timestamp]" after the name and labels', raw);
    const value = parseValue(parts[1]!, line, raw);
    const sample: PromSample = { name, labels, value, ...(parts[2] !== undefined && { timestampMs: Number(parts[2]) }) };
    const f = family(familyOf(name, types), line, raw);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seriesSeen.has(key)) fail(line, `duplicate series ${name}`, raw);
    seriesSeen.add(key);
    if (f.type === 'counter' && !(value >= 0)) fail(line, 'a counter must be a number >= 0', raw);
    if (f.type !== 'histogram' && f.type !== 'summary' && name !== f.name) fail(line, `sample ${name} in family ${f.name}`, raw);
    f.samples.push(sample);
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return families;
}

/** Buckets cumulative, ending at +Inf equal to _count, for every label set. */
function checkHistogram(f: PromFamily): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; count?: number; sum?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    let g = groups.get(key);
    if (g === undefined) groups.set(key, (g = { buckets: [] }));
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}_bucket without le`);
      g.buckets.push([le === '+Inf' ? Infinity : Number(le), s.value]);
    } else if (s.name === `${f.name}_count`) g.count = s.value;
    else if (s.name === `${f.name}_sum`) g.sum = s.value;
    else throw new Error(`unexpected sample ${s.name} in histogram ${f.name}`);
  }
  for (const g of groups.values()) {
    if (g.count === undefined || g.sum === undefined) throw new Error(`histogram ${f.name} lacks _count or _sum`);
    const last = g.buckets.at(-1);
    if (last === undefined || last[0] !== Infinity) throw new Error(`histogram ${f.name} lacks the +Inf bucket`);
    for (let i = 1; i < g.buckets.length; i++) {
      if (!(g.buckets[i]![0] > g.buckets[i - 1]![0])) throw new Error(`histogram ${f.name}: le not increasing`);
      if (g.buckets[i]![1] < g.buckets[i - 1]![1]) throw new Error(`histogram ${f.name}: buckets not cumulative`);
    }
    if (last[1] !== g.count) throw new Error(`histogram ${f.name}: +Inf bucket ${last[1]} differs from _count ${g.count}`);
  }
}

/** The value of the one sample `name` with exactly `labels`, or undefined. */
export function valueOf(families: Map<string, PromFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  for (const f of families.values()) {
    for (const s of f.samples) if (s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want) return s.value;
  }
  return undefined;
}
