/**
 * Reads and validates `plugin.json`. The validator is compiled once; every refusal names the file,
 * the field and what was expected.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import { manifestSchema, PLUGIN_API_VERSION, type PluginManifest } from '../../plugin-sdk/src/schemas/manifest.ts';

const ajv = new Ajv({ allErrors: true, strict: true });
const validateManifest = ajv.compile<PluginManifest>(manifestSchema);
const validConfigSchema = new Ajv({ strict: false });

/** One line per problem: `field "roles/0": must be one of server, sink, client (got "web")`. */
export function describeAjvErrors(errors: ErrorObject[] | null | undefined, root: unknown): string {
  return (errors ?? [])
    .map((e) => {
      const field = e.instancePath ? e.instancePath.slice(1) : '';
      if (e.keyword === 'additionalProperties') {
        const key = (e.params as { additionalProperty: string }).additionalProperty;
        return `unknown field "${field ? `${field}/` : ''}${key}"`;
      }
      if (e.keyword === 'required') {
        const key = (e.params as { missingProperty: string }).missingProperty;
        return `missing field "${field ? `${field}/` : ''}${key}"`;
      }
      const expected = e.keyword === 'enum'
        ? `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`
        : (e.message ?? 'is invalid');
      return `field "${field || '(root)'}": ${expected} (got ${JSON.stringify(valueAt(root, e.instancePath))})`;
    })
    .join('; ');
}

function valueAt(root: unknown, pointer: string): unknown {
  let cur = root;
  for (const part of pointer.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    const key = part.replaceAll('~1', '/').replaceAll('~0', '~');
    cur = Object.hasOwn(cur, key) ? (cur as Record<string, unknown>)[key] : undefined;
  }
  return cur;
}

/** Reads `<folder>/plugin.json`; throws a BoltError naming the file and field when it is not a valid manifest. */
export async function readManifest(folder: string): Promise<PluginManifest> {
  const file = path.join(folder, 'plugin.json');
  let data: unknown;
  try {
    data = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new BoltError('BOLT_ERR_MANIFEST_UNREADABLE', `${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
  if (!validateManifest(data)) {
    throw new BoltError('BOLT_ERR_MANIFEST_INVALID', `${file}: ${describeAjvErrors(validateManifest.errors, data)}`, { details: { file } });
  }
  if (data.apiVersion !== PLUGIN_API_VERSION) {
    throw new BoltError('BOLT_ERR_MANIFEST_API_VERSION', `${file}: field "apiVersion": this core provides plugin API version ${PLUGIN_API_VERSION} (got ${data.apiVersion})`, { details: { file } });
  }
  if (data.config !== undefined && !validConfigSchema.validateSchema(data.config)) {
    throw new BoltError('BOLT_ERR_MANIFEST_INVALID', `${file}: field "config": not a valid JSON Schema: ${validConfigSchema.errorsText(validConfigSchema.errors)}`, { details: { file } });
  }
  return data;
}
