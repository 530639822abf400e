/**
 * Helpers shared by the fault spec and the sacrificial core script: installing a fault plugin from
 * this folder under a chosen isolation, and making it fault.
 */
import { cp, readFile, rename, writeFile, mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Bus, Isolation } from '../../plugin-sdk/src/index.ts';
import type { TestCore } from '../helpers/core.ts';

export const FAULTS_DIR = fileURLToPath(new URL('.', import.meta.url));

/** The name a fault plugin gets when installed under `isolation`, unique within one core. */
export function faultPluginName(fault: string, isolation: Isolation): string {
  return `fault-${fault}-${isolation}`;
}

/**
 * Copies `test/faults/<fault>` into the core's plugins directory with the manifest's name and
 * isolation rewritten. The folder is staged outside the watched directory and renamed in, so the
 * watcher never sees the original manifest. Returns the installed folder.
 */
export async function installFault(tc: TestCore, fault: string, isolation: Isolation): Promise<string> {
  const name = faultPluginName(fault, isolation);
  const staging = await mkdtemp(path.join(tc.dir, 'staging-'));
  const staged = path.join(staging, name);
  await cp(path.join(FAULTS_DIR, fault), staged, { recursive: true });
  const manifestFile = path.join(staged, 'plugin.json');
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as Record<string, unknown>;
  await writeFile(manifestFile, JSON.stringify({ ...manifest, name, isolation }, null, 2));
  const dest = path.join(tc.pluginsDir, name);
  await rename(staged, dest);
  return dest;
}

/**
 * Makes a running fault plugin fault once. Worker and process plugins fault in their subscriber of
 * `fault.trigger` (fire and forget: resolves at once); a pool plugin faults in the call, and the
 * promise settles with the call's outcome (never rejects).
 */
export async function triggerFault(bus: Bus, name: string, isolation: Isolation, callTimeoutMs: number): Promise<{ ok: true; value: unknown } | { ok: false; error: Error & { code?: string; cause?: unknown } }> {
  if (isolation !== 'pool') {
    bus.publish('fault.trigger', name);
    return { ok: true, value: undefined };
  }
  try {
    return { ok: true, value: await bus.request(name, null, { timeoutMs: callTimeoutMs }) };
  } catch (err) {
    return { ok: false, error: err as Error & { code?: string } };
  }
}
