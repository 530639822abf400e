/**
 * Entry of every piscina thread of an `isolation: "pool"` plugin. It loads the plugin's bundle and
 * wraps its function so that what the function throws comes back as data: a rejected pool task
 * then always means the thread itself died (exit, out of memory, aborted after a timeout), which
 * the core counts as a crash of the plugin.
 */
import { workerData } from 'node:worker_threads';
import { BoltError, toErrorInfo, type ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { HostInit } from './protocol.ts';
import { hardenProcess } from './harden.ts';

export type PoolOutcome = { ok: true; value: unknown } | { ok: false; error: ErrorInfo };

const init = (workerData as { init: HostInit }).init;
if (init.harden) hardenProcess();

async function load(): Promise<(input: unknown) => Promise<PoolOutcome>> {
  const mod = (await import(init.bundleUrl)) as { default?: unknown };
  const fn = mod.default;
  if (typeof fn !== 'function') {
    throw new BoltError('BOLT_ERR_PLUGIN_NO_START', `the default export of pool plugin '${init.name}' is not a function`);
  }
  return async (input: unknown) => {
    try {
      return { ok: true, value: await (fn as (i: unknown) => unknown)(input) };
    } catch (err) {
      return { ok: false, error: toErrorInfo(err) };
    }
  };
}

const loaded = load();

/**
 * Piscina awaits a default export that is a promise of the task function. It always resolves:
 * when it rejected, piscina imported this module a second time, which ran the hardening twice and
 * reported "Cannot redefine property" instead of the plugin's own load error. `ready` reports that
 * error to the core; a call never reaches a plugin that failed to load.
 */
export default loaded.catch((err: unknown) => async (): Promise<PoolOutcome> => ({ ok: false, error: toErrorInfo(err) }));

/** Resolves once the plugin's module has loaded (rejects if it failed); the core calls it before serving. */
export async function ready(): Promise<true> {
  await loaded;
  return true;
}
