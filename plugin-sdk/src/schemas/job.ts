/**
 * The job file (`tasks/*.yaml`, JSON also accepted): its JSON Schema, the TypeScript type of what a
 * user writes (`JobSpec`), and the normalized form the parser hands to the scheduler
 * (`NormalizedJob`). The schema and the types are written by hand to match each other.
 *
 * Value forms shared by several fields:
 *
 * - **Duration**: either a non-negative whole number of milliseconds (`1500`), or a string of one to
 *   four parts `<number><unit>` with the units `h`, `m`, `s`, `ms` in that order, each at most once,
 *   no spaces, no sign: `500ms`, `30s`, `5m`, `1h`, `1m30s`, `1h30m`, `1s250ms`, `1.5s`. Decimals
 *   are allowed in every part; the total is rounded to the nearest millisecond. Where a duration is
 *   used (task `timeout`, metrics `interval`) it must be greater than zero and at most 2147483647 ms
 *   (about 24.8 days, the longest delay a Node.js timer supports).
 * - **Percentage**: a string `N%` with N between 0 and 100, decimals allowed (`5%`, `99.9%`).
 * - **Names** (task ids, group names, var names): letters, digits, `_` and `-`, starting with a
 *   letter or `_`, at most 64 characters; `__proto__`, `constructor` and `prototype` are reserved.
 *
 * Unknown keys are errors at every level except inside a task's `with` (the action's own input) and
 * top-level keys starting with `x-`, which are ignored: they hold YAML anchors to reuse with `*name`
 * or `<<: *name` (merge keys are enabled).
 *
 * Templates: `{{ vars.NAME }}` may appear in any string value outside `vars` and is substituted when
 * the job is parsed; a string that is exactly one such template takes the var's value with its type
 * (`rate: "{{ vars.rate }}"` stays a number). Var values are literal text, never expanded; a
 * `--var NAME=VALUE` must fit the type the file gives NAME (number, boolean or string).
 * `{{ hosts.GROUP[i].address }}`, `.name` and `.labels.KEY` (i from 0) may appear only inside a
 * task's `with` and are substituted when the task is dispatched. `{{ '...' }}` is literal text
 * (write `{{ '{{' }}` for a literal `{{`). Keys are never templated.
 */

/** Metric families a collector can sample on every targeted host. */
export const METRIC_NAMES = ['cpu', 'memory', 'network', 'disk', 'filesystem', 'load', 'process'] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

/** Metrics collected while tasks run, sampled on every targeted host. */
export const DEFAULT_METRICS: { intervalMs: number; collect: MetricName[] } = {
  intervalMs: 1000,
  collect: ['cpu', 'memory', 'network', 'disk'],
};

/** When the hosts of a task start its action: all at one instant, or each as soon as it can. */
export const START_MODES = ['together', 'asap'] as const;
export type StartMode = (typeof START_MODES)[number];

/** Names that are never accepted as task ids, group names or var names. */
export const RESERVED_NAMES = ['__proto__', 'constructor', 'prototype'] as const;

/** A duration: whole milliseconds, or a string like `500ms`, `30s`, `5m`, `1h`, `1m30s` (see the module comment). */
export type Duration = string | number;

export interface MetricsSpec {
  /** Sampling period (a duration). */
  interval?: Duration;
  /** Which metric families to collect; no repeats. */
  collect?: MetricName[];
}

export interface GroupSpec {
  /** Hosts whose labels include every one of these pairs. Values may be written as numbers or booleans; they are compared as strings. Omitted or `{}`: every host. */
  labels?: Record<string, string | number | boolean>;
  /** Take this many of the matching hosts (at least 1), or `'all'` of them. */
  count?: number | 'all';
}

export interface RequireSpec {
  /** Share of the targeted hosts that must be healthy before the first task starts: `'N%'` or a fraction 0..1. */
  healthy?: string | number;
}

export interface FailureSpec {
  /** The task still succeeds if at most this many of its hosts fail: a whole number of hosts, or `'N%'` of them. */
  maxFailedHosts?: number | string;
}

export interface TaskSpec {
  /** Unique within the job (a name, see the module comment). */
  id: string;
  description?: string;
  /** A group name or a list of group names; the task runs on the union of their hosts. */
  hosts: string | string[];
  /** Task ids that must have finished successfully before this one starts. */
  needs?: string | string[];
  start?: StartMode;
  /** The action to run, such as `shell`, `sleep`, `mark`, `distribute` or `http-load`. */
  action: string;
  /** The action's own input, free-form; its strings may use host templates. */
  with?: Record<string, unknown>;
  /** Per-host limit for one attempt of the action (a duration). */
  timeout?: Duration;
  /** How many times a failed host retries the action. */
  retries?: number;
  failure?: FailureSpec;
  /** Overrides the job's `metrics` for this task, key by key. */
  metrics?: MetricsSpec;
}

/** A job file as its author writes it. */
export interface JobSpec {
  name: string;
  description?: string;
  /** Values usable as `{{ vars.NAME }}`; `--var NAME=VALUE` on the command line overrides them. */
  vars?: Record<string, string | number | boolean>;
  /** Named host selections that tasks refer to by name. */
  groups?: Record<string, GroupSpec>;
  /** Health gate before the first task. */
  require?: RequireSpec;
  /** Metrics collected while tasks run (each task may override). */
  metrics?: MetricsSpec;
  tasks: TaskSpec[];
  /** Top-level keys starting with `x-` are ignored; they hold YAML anchors for reuse. */
  [extension: `x-${string}`]: unknown;
  /** Run the job on a schedule: a node-cron expression of 5 or 6 fields (seconds first when 6), or `@daily` and the like. */
  schedule?: string;
}

/** Either a number of hosts or a percentage (0..100) of the task's hosts. */
export type HostShare = { count: number } | { percent: number };

export interface NormalizedMetrics {
  /** Sampling period in ms. Default 1000 (task: the job's value). */
  intervalMs: number;
  /** Default `['cpu', 'memory', 'network', 'disk']` (task: the job's value). */
  collect: MetricName[];
}

export interface NormalizedGroup {
  /** Label pairs a host must have, values as strings. Default `{}` (every host). */
  labels: Record<string, string>;
  /** Default `'all'`. */
  count: number | 'all';
}

export interface NormalizedTask {
  id: string;
  /** Default `null`. */
  description: string | null;
  /** Group names, in the order written; always a list. */
  hosts: string[];
  /** Task ids; always a list, default `[]`. */
  needs: string[];
  /** Default `'asap'`. */
  start: StartMode;
  action: string;
  /** `{{ vars.* }}` already substituted; host templates left for dispatch (see renderTemplate). Default `{}`. */
  with: Record<string, unknown>;
  /** Default `null`: no limit. */
  timeoutMs: number | null;
  /** Default 0. */
  retries: number;
  failure: {
    /** Default `{ count: 0 }`: any failed host fails the task. */
    maxFailedHosts: HostShare;
  };
  /** The job's metrics with this task's overrides applied. */
  metrics: NormalizedMetrics;
  /**
   * Position of the task in a topological order of `needs` (0 = first). Every task comes after all
   * tasks it needs; ties keep file order. Unique per task, 0..tasks.length-1.
   */
  order: number;
}

/** A job after parsing: templates of vars substituted, defaults filled in, units converted. */
export interface NormalizedJob {
  name: string;
  /** Default `null`. */
  description: string | null;
  /** The effective vars (file values overridden by --var), as strings. Default `{}`. */
  vars: Record<string, string>;
  /** Default `{}`. */
  groups: Record<string, NormalizedGroup>;
  require: {
    /** Fraction 0..1 of targeted hosts that must be healthy. Default 1 (every host). */
    healthy: number;
  };
  /** Default: DEFAULT_METRICS. */
  metrics: NormalizedMetrics;
  /** In file order; see `order` for the dependency order. */
  tasks: NormalizedTask[];
  /** The cron expression as written, or `null` (run once, when asked). */
  schedule: string | null;
}

/** Task ids, group names and var names (as a JSON Schema / RegExp source). */
export const NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_-]{0,63}$';
const PERCENT_PATTERN = '^(?:100(?:\\.0+)?|[0-9]{1,2}(?:\\.[0-9]+)?)%$';
const DURATION_PATTERN =
  '^(?=[0-9])(?:([0-9]+(?:\\.[0-9]+)?)h)?(?:([0-9]+(?:\\.[0-9]+)?)m(?!s))?(?:([0-9]+(?:\\.[0-9]+)?)s)?(?:([0-9]+(?:\\.[0-9]+)?)ms)?$';
const DURATION = new RegExp(DURATION_PATTERN);
const DURATION_UNITS_MS = [3_600_000, 60_000, 1000, 1];

/**
 * Milliseconds of a duration in the form above (whole milliseconds, or `1m30s` and the like),
 * rounded to the nearest millisecond; null when the value is not a duration. Range checks (above
 * zero, within a timer's reach) are the caller's, as they depend on where the duration is used.
 */
export function parseDuration(value: unknown): number | null {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : null;
  if (typeof value !== 'string') return null;
  const m = DURATION.exec(value);
  return m ? Math.round(DURATION_UNITS_MS.reduce((sum, unit, i) => sum + Number(m[i + 1] ?? 0) * unit, 0)) : null;
}

/**
 * JSON Schema (draft-07) of a job file. Union types are written as type arrays whose other keywords
 * apply to one type each (`minimum` to numbers, `pattern` to strings), so an ajv instance needs
 * `allowUnionTypes: true`. Ranges the schema cannot express (a duration above zero and within the
 * timer limit, a cron expression, references between tasks and groups) are checked by the parser.
 */
export const jobSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'Bolt job',
  type: 'object',
  additionalProperties: false,
  required: ['name', 'tasks'],
  patternProperties: { '^x-': {} },
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 200 },
    description: { type: 'string' },
    vars: {
      type: 'object',
      propertyNames: { $ref: '#/definitions/name' },
      additionalProperties: { type: ['string', 'number', 'boolean'] },
    },
    groups: {
      type: 'object',
      propertyNames: { $ref: '#/definitions/name' },
      additionalProperties: { $ref: '#/definitions/group' },
    },
    require: {
      type: 'object',
      additionalProperties: false,
      properties: { healthy: { $ref: '#/definitions/healthyShare' } },
    },
    metrics: { $ref: '#/definitions/metrics' },
    tasks: { type: 'array', minItems: 1, items: { $ref: '#/definitions/task' } },
    schedule: { type: 'string', minLength: 1 },
  },
  definitions: {
    name: { type: 'string', pattern: NAME_PATTERN, not: { enum: [...RESERVED_NAMES] } },
    duration: { type: ['string', 'number'], pattern: DURATION_PATTERN, minimum: 0, multipleOf: 1 },
    healthyShare: { type: ['string', 'number'], pattern: PERCENT_PATTERN, minimum: 0, maximum: 1 },
    hostShare: { type: ['string', 'integer'], pattern: PERCENT_PATTERN, minimum: 0 },
    hostCount: { type: ['string', 'integer'], pattern: '^all$', minimum: 1 },
    groupRefs: { type: ['string', 'array'], minItems: 1, uniqueItems: true, items: { type: 'string' } },
    taskRefs: { type: ['string', 'array'], uniqueItems: true, items: { type: 'string' } },
    group: {
      type: 'object',
      additionalProperties: false,
      properties: {
        labels: { type: 'object', additionalProperties: { type: ['string', 'number', 'boolean'] } },
        count: { $ref: '#/definitions/hostCount' },
      },
    },
    metrics: {
      type: 'object',
      additionalProperties: false,
      properties: {
        interval: { $ref: '#/definitions/duration' },
        collect: { type: 'array', uniqueItems: true, items: { enum: [...METRIC_NAMES] } },
      },
    },
    task: {
      type: 'object',
      additionalProperties: false,
      required: ['id', 'hosts', 'action'],
      properties: {
        id: { $ref: '#/definitions/name' },
        description: { type: 'string' },
        hosts: { $ref: '#/definitions/groupRefs' },
        needs: { $ref: '#/definitions/taskRefs' },
        start: { enum: [...START_MODES] },
        action: { type: 'string', minLength: 1 },
        with: { type: 'object' },
        timeout: { $ref: '#/definitions/duration' },
        retries: { type: 'integer', minimum: 0 },
        failure: {
          type: 'object',
          additionalProperties: false,
          properties: { maxFailedHosts: { $ref: '#/definitions/hostShare' } },
        },
        metrics: { $ref: '#/definitions/metrics' },
      },
    },
  },
} as const;
