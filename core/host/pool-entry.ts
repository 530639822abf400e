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
// Marked as handled here; `ready` reports the failure to the core.
loaded.catch(() => undefined);

/** Piscina awaits a default export that is a promise of the task function. */
export default loaded;

/** Resolves once the plugin's module has loaded (rejects if it failed); the core calls it before serving. */
export async function ready(): Promise<true> {
  await loaded;
  return true;
}
