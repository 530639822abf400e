/**
 * `bolt.yaml`: optional settings for the core and per-plugin settings, each plugin's validated
 * against the `config` schema in its own manifest.
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { PluginManifest } from '../../plugin-sdk/src/schemas/manifest.ts';
import { describeAjvErrors } from '../manifest/index.ts';

export interface SupervisorSettings {
  /**
   * How often the core checks each plugin host. A worker whose event loop has waited for events
   * since the last check counts as answering without being woken; any other host is pinged.
   */
  heartbeatIntervalMs: number;
  /** A host that has not answered a ping for this long is terminated (an endless loop). */
  watchdogTimeoutMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  /** K: crashes allowed within the window before the plugin is `failed`. */
  maxRestarts: number;
  /** T: the window, in seconds. */
  restartWindowS: number;
  startTimeoutMs: number;
  stopTimeoutMs: number;
}

/** Caps on what the manifests' `resourceLimits` give each plugin of this process. */
export interface PluginLimits {
  /**
   * The most young generation (MiB) a plugin thread (worker or pool) gets: a manifest asking for
   * more, or for nothing (V8 then lets it grow to 48 MiB on a 64-bit host), gets this.
   */
  maxYoungGenerationSizeMb?: number;
}

export interface BoltConfig {
  /** Settings per plugin name. */
  plugins: Record<string, unknown>;
  /** Caps for every plugin: bolt.yaml's `pluginLimits` over the defaults of the process's roles. */
  pluginLimits: PluginLimits;
  /** `process` runs every plugin not shipped with Bolt in a child process, whatever its manifest says. */
  untrustedIsolation?: 'process';
  supervisor: SupervisorSettings;
  watcher: { settleMs: number };
}

export const DEFAULT_SUPERVISOR: SupervisorSettings = {
  heartbeatIntervalMs: 500,
  watchdogTimeoutMs: 2000,
  backoffInitialMs: 100,
  backoffMaxMs: 30_000,
  maxRestarts: 5,
  restartWindowS: 60,
  startTimeoutMs: 10_000,
  stopTimeoutMs: 5000,
};

/**
 * Defaults per role for what bolt.yaml leaves out. An agent (client) runs beside the workload it
 * measures, so its plugins get a 3 MiB young generation, as its client-only plugins' manifests
 * already ask: without the cap the transport (whose manifest serves the server and sink too, where
 * a big young generation pays) grew one to 16 MiB that it sometimes kept (BENCHMARKS.md,
 * agent-overhead). A process with several roles takes a default only when each of its roles has
 * one, the largest.
 */
const ROLE_PLUGIN_LIMITS: Readonly<Record<string, PluginLimits>> = {
  client: { maxYoungGenerationSizeMb: 3 },
};

function rolePluginLimits(roles: readonly string[]): PluginLimits {
  const caps = roles.map((role) => ROLE_PLUGIN_LIMITS[role]?.maxYoungGenerationSizeMb);
  const set = caps.filter((cap) => cap !== undefined);
  return set.length > 0 && set.length === caps.length ? { maxYoungGenerationSizeMb: Math.max(...set) } : {};
}

const configSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    plugins: { type: 'object', additionalProperties: { type: 'object' } },
    untrustedIsolation: { enum: ['process'] },
    pluginLimits: {
      type: 'object',
      additionalProperties: false,
      properties: { maxYoungGenerationSizeMb: { type: 'integer', minimum: 1, maximum: 4096 } },
    },
    supervisor: {
      type: 'object',
      additionalProperties: false,
      properties: Object.fromEntries(Object.keys(DEFAULT_SUPERVISOR).map((k) => [k, { type: 'number', minimum: 1 }])),
    },
    watcher: { type: 'object', additionalProperties: false, properties: { settleMs: { type: 'number', minimum: 0, maximum: 10_000 } } },
  },
} as const;

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validateConfig = ajv.compile(configSchema);
const pluginValidators = new Map<string, ValidateFunction>();

/**
 * Reads bolt.yaml; a missing file gives the defaults, those of `roles` included. Throws
 * BOLT_ERR_CONFIG_INVALID naming the file and field.
 */
export async function loadConfig(file: string | undefined, roles: readonly string[]): Promise<BoltConfig> {
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new BoltError('BOLT_ERR_CONFIG_INVALID', `${file}: ${(err as Error).message}`, { cause: err });
      text = '';
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      throw new BoltError('BOLT_ERR_CONFIG_INVALID', `${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (!validateConfig(raw)) {
    throw new BoltError('BOLT_ERR_CONFIG_INVALID', `${file ?? 'bolt.yaml'}: ${describeAjvErrors(validateConfig.errors, raw)}`);
  }
  const r = raw as Partial<BoltConfig>;
  return {
    plugins: r.plugins ?? {},
    pluginLimits: { ...rolePluginLimits(roles), ...r.pluginLimits },
    ...(r.untrustedIsolation ? { untrustedIsolation: r.untrustedIsolation } : {}),
    supervisor: { ...DEFAULT_SUPERVISOR, ...r.supervisor },
    watcher: { settleMs: r.watcher?.settleMs ?? 100 },
  };
}

/** Validates (and fills defaults into a copy of) one plugin's settings against its manifest's config schema. */
export function pluginSettings(manifest: PluginManifest, config: BoltConfig, configFile: string): unknown {
  const settings = structuredClone(config.plugins[manifest.name] ?? {});
  if (!manifest.config) return settings;
  const key = JSON.stringify(manifest.config);
  let validate = pluginValidators.get(key);
  if (!validate) {
    validate = ajv.compile(manifest.config);
    pluginValidators.set(key, validate);
  }
  if (!validate(settings)) {
    const fields = describeAjvErrors(validate.errors, settings).replaceAll('field "', `field "plugins/${manifest.name}/`);
    throw new BoltError('BOLT_ERR_PLUGIN_CONFIG_INVALID', `${configFile}: ${fields}`);
  }
  return settings;
}
