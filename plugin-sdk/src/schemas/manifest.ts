/** The plugin API version this SDK describes. A manifest asking for another one is refused. */
export const PLUGIN_API_VERSION = 1;

/** What a plugin is for. The core treats every kind alike; roles and tooling use it to group plugins. */
export const PLUGIN_KINDS = [
  'parser', 'scheduler', 'transport', 'health', 'action', 'collector',
  'aggregator', 'writer', 'exporter', 'ui', 'service', 'example',
] as const;
export type PluginKind = (typeof PLUGIN_KINDS)[number];

/** The roles a Bolt process can play; a process loads the plugins whose `roles` include one of its roles. */
export const ROLES = ['server', 'sink', 'client'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Where a plugin runs:
 * - `worker` (default): its own worker thread with resource limits and a hardened `process`.
 * - `process`: a forked child process; contains native crashes and huge allocations too.
 * - `pool`: a piscina pool of threads for a stateless plugin whose default export is a function.
 */
export const ISOLATIONS = ['worker', 'process', 'pool'] as const;
export type Isolation = (typeof ISOLATIONS)[number];

/** A JSON Schema object, as used for a plugin's `config`. */
export type JsonSchema = Record<string, unknown>;

/** `plugins/<name>/plugin.json`. */
export interface PluginManifest {
  /** Unique among loaded plugins: lower-case letters, digits and dashes. */
  name: string;
  /** Semantic version of the plugin. */
  version: string;
  /** Plugin API version the plugin is written against; must equal PLUGIN_API_VERSION. */
  apiVersion: number;
  kind: PluginKind;
  /** Roles that load this plugin. */
  roles: Role[];
  /** Entry module, relative to the plugin folder (`.ts`, `.mts`, `.js` or `.mjs`). */
  entry: string;
  /** Defaults to `worker`. */
  isolation?: Isolation;
  /** Capabilities the plugin offers, such as `action:shell` (informational; shown by `bolt-core plugins`). */
  provides?: string[];
  /** JSON Schema for the plugin's settings in bolt.yaml; settings default to `{}`. */
  config?: JsonSchema;
  /** Limits for the worker or child that hosts the plugin. */
  resourceLimits?: {
    /** Heap limit in MiB (worker `maxOldGenerationSizeMb`, child `--max-old-space-size`). */
    maxOldGenerationSizeMb?: number;
    maxYoungGenerationSizeMb?: number;
    stackSizeMb?: number;
  };
  /** For `isolation: "pool"`: the number of threads (defaults: min 1, max 2). */
  pool?: { minThreads?: number; maxThreads?: number };
  description?: string;
}

/** JSON Schema (draft-07) of plugin.json; the core validates every manifest against it with ajv. */
export const manifestSchema = {
  $id: 'https://bolt.dev/schemas/manifest.json',
  type: 'object',
  required: ['name', 'version', 'apiVersion', 'kind', 'roles', 'entry'],
  additionalProperties: false,
  properties: {
    $schema: { type: 'string' },
    name: { type: 'string', pattern: '^[a-z][a-z0-9-]{0,63}$' },
    version: { type: 'string', pattern: '^\\d+\\.\\d+\\.\\d+(?:[-+][0-9A-Za-z.-]+)?$' },
    apiVersion: { type: 'integer', minimum: 1 },
    kind: { enum: [...PLUGIN_KINDS] },
    roles: { type: 'array', items: { enum: [...ROLES] }, minItems: 1, uniqueItems: true },
    entry: { type: 'string', pattern: '^(?!/)(?!.*\\.\\.)[^\\\\]+\\.(ts|mts|js|mjs)$' },
    isolation: { enum: [...ISOLATIONS] },
    provides: { type: 'array', items: { type: 'string', maxLength: 128 }, uniqueItems: true },
    config: { type: 'object' },
    resourceLimits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        maxOldGenerationSizeMb: { type: 'integer', minimum: 8, maximum: 65536 },
        maxYoungGenerationSizeMb: { type: 'integer', minimum: 1, maximum: 4096 },
        stackSizeMb: { type: 'integer', minimum: 1, maximum: 64 },
      },
    },
    pool: {
      type: 'object',
      additionalProperties: false,
      properties: {
        minThreads: { type: 'integer', minimum: 0, maximum: 64 },
        maxThreads: { type: 'integer', minimum: 1, maximum: 64 },
      },
    },
    description: { type: 'string', maxLength: 500 },
  },
} as const;
