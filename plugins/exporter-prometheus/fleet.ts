/**
 * The live fleet view of the exporter: the latest value of every metric of every host, from the
 * sink's metrics batches, as Prometheus gauges `bolt_host_<metric>{host, <tags>}` in a prom-client
 * registry.
 *
 * Guarantees:
 * - One series per host, metric and tag set (the `task` and `run` tags are left out, so a series
 *   lives across tasks); it holds the value of the sample with the latest `t` seen.
 * - At most `maxSeries` series: samples of new series beyond it are refused and counted
 *   (`refused`); a series not updated for `staleAfterMs` is removed at the next scrape, which
 *   frees its place.
 * - Only metrics matching `metrics` patterns are kept (`*` alone: all; `cpu.*`: a prefix).
 */
import { Gauge, type Registry } from 'prom-client';

export interface FleetSettings {
  maxSeries: number;
  staleAfterMs: number;
  /** Metric names to export: exact names, or prefixes ending in `*`. */
  metrics: string[];
}

/** A sample as it comes in a `sink.metrics.batch`. */
export interface IncomingSample {
  t: number;
  metric: string;
  value: number;
  tags?: Record<string, string>;
}

interface Entry {
  /** Key within the host's map (metric and tags), and the host's name. */
  key: string;
  host: string;
  family: Family;
  labels: Record<string, string>;
  t: number;
  value: number;
  /** performance.now() of the last update. */
  seenAt: number;
}

/** All series of one Prometheus metric name. */
interface Family {
  name: string;
  help: string;
  labelNames: Set<string>;
  gauge: Gauge;
  entries: Set<Entry>;
}

/** Tags that identify a run or task, not a series of the host. */
const LEFT_OUT_TAGS = new Set(['task', 'run', 'runId']);
/** Labels this view sets itself; a tag of that name becomes `tag_<name>`. */
const OWN_LABELS = new Set(['host']);

/** A Bolt metric name as a Prometheus metric name: `cpu.busy` → `bolt_host_cpu_busy`. */
export function promMetricName(metric: string): string {
  return `bolt_host_${metric.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

/** A tag key as a Prometheus label name (letters, digits, `_`; not starting with a digit or `__`). */
export function promLabelName(tag: string): string {
  let name = tag.replace(/[^A-Za-z0-9_]/g, '_');
  if (/^[0-9]/.test(name)) name = `_${name}`;
  if (name.startsWith('__')) name = `tag${name}`;
  if (OWN_LABELS.has(name)) name = `tag_${name}`;
  return name;
}

export class FleetView {
  /** Samples refused because `maxSeries` series existed. */
  refused = 0;
  readonly #settings: FleetSettings;
  readonly #registry: Registry;
  readonly #hosts = new Map<string, Map<string, Entry>>();
  readonly #families = new Map<string, Family>();
  /** Per Bolt metric name: its family name, or null when not exported. */
  readonly #wanted = new Map<string, string | null>();
  readonly #exact: Set<string>;
  readonly #prefixes: string[];
  #series = 0;

  constructor(settings: FleetSettings, registry: Registry) {
    this.#settings = settings;
    this.#registry = registry;
    this.#exact = new Set(settings.metrics.filter((m) => !m.endsWith('*')));
    this.#prefixes = settings.metrics.filter((m) => m.endsWith('*')).map((m) => m.slice(0, -1));
  }

  /** Series held now. */
  get series(): number {
    return this.#series;
  }

  /** Takes the samples of one batch from `host`; `now` is performance.now(). */
  add(host: string, samples: readonly IncomingSample[], now: number): void {
    let byHost = this.#hosts.get(host);
    for (const s of samples) {
      if (typeof s !== 'object' || s === null || typeof s.metric !== 'string' || typeof s.value !== 'number' || !Number.isFinite(s.value)) continue;
      const familyName = this.#familyName(s.metric);
      if (familyName === null) continue;
      const key = s.tags === undefined ? s.metric : `${s.metric}\u0000${tagKey(s.tags)}`;
      const entry = byHost?.get(key);
      if (entry !== undefined) {
        if (s.t >= entry.t) {
          entry.t = s.t;
          entry.value = s.value;
          entry.seenAt = now;
        }
        continue;
      }
      if (this.#series >= this.#settings.maxSeries) {
        this.refused++;
        continue;
      }
      if (byHost === undefined) {
        byHost = new Map();
        this.#hosts.set(host, byHost);
      }
      const labels: Record<string, string> = { host };
      for (const tag in s.tags) if (!LEFT_OUT_TAGS.has(tag)) labels[promLabelName(tag)] = String(s.tags[tag]);
      const family = this.#family(familyName, s.metric, Object.keys(labels));
      const created: Entry = { key, host, family, labels, t: s.t, value: s.value, seenAt: now };
      byHost.set(key, created);
      family.entries.add(created);
      this.#series++;
    }
  }

  /** Removes series not updated within staleAfterMs of `now` (performance.now()). */
  expire(now: number): void {
    const oldest = now - this.#settings.staleAfterMs;
    for (const [host, byHost] of this.#hosts) {
      for (const entry of byHost.values()) {
        if (entry.seenAt >= oldest) continue;
        byHost.delete(entry.key);
        entry.family.entries.delete(entry);
        this.#series--;
      }
      if (byHost.size === 0) this.#hosts.delete(host);
    }
  }

  #familyName(metric: string): string | null {
    const known = this.#wanted.get(metric);
    if (known !== undefined) return known;
    const wanted = this.#exact.has(metric) || this.#prefixes.some((p) => metric.startsWith(p));
    const name = wanted ? promMetricName(metric) : null;
    // Metric names come from the wire (bounded by its schema); a flood of distinct names only
    // refills this cache, it cannot grow it without bound.
    if (this.#wanted.size >= 10_000) this.#wanted.clear();
    this.#wanted.set(metric, name);
    return name;
  }

  /** The family of `name`, with a gauge whose label names include `labelNames`. */
  #family(name: string, metric: string, labelNames: string[]): Family {
    let family = this.#families.get(name);
    if (family !== undefined && labelNames.every((l) => family!.labelNames.has(l))) return family;
    const all = new Set([...(family?.labelNames ?? []), ...labelNames]);
    if (family !== undefined) this.#registry.removeSingleMetric(name);
    const entries = family?.entries ?? new Set<Entry>();
    const help = `Latest value of the Bolt metric ${metric} on each host (from the sink's metrics batches)`;
    const gauge = new Gauge({
      name,
      help,
      labelNames: [...all],
      registers: [this.#registry],
      collect() {
        this.reset();
        for (const entry of entries) this.set(entry.labels, entry.value);
      },
    });
    family = { name, help, labelNames: all, gauge, entries };
    this.#families.set(name, family);
    return family;
  }
}

/** The tags of a sample as a key: insertion order, `task` and `run` left out. */
function tagKey(tags: Record<string, string>): string {
  let key = '';
  for (const tag in tags) if (!LEFT_OUT_TAGS.has(tag)) key += `${tag}=${tags[tag]}\u0001`;
  return key;
}
