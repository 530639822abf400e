/**
 * Hardening of a worker thread's `process` before plugin code loads. Worker threads share the
 * process with the core, so `process.kill(process.pid)` from a plugin would kill everything
 * (MEASURED.md, section 3). What cannot be blocked here (a plugin that spawns `kill -9` through
 * child_process, or its own Worker) is why untrusted plugins run with `isolation: "process"`.
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';

function denied(what: string): () => never {
  return () => {
    throw new BoltError('BOLT_ERR_PLUGIN_DENIED', `${what} is not allowed inside a plugin; it would end or alter the whole Bolt process`);
  };
}

function lock(target: object, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, writable: false, configurable: false, enumerable: false });
}

/**
 * Makes the worker's `process` unable to end or alter the main process. Worker threads share the
 * process with the core: `process.kill(process.pid)` would kill everything. `process.exit()` in a
 * worker ends only the worker (Node's own behaviour) and counts as a crash; `process.reallyExit`
 * is left alone because Node's worker exit path calls it.
 */
export function hardenProcess(): void {
  const ownPids = new Set([process.pid, process.ppid]);
  const realKill = process.kill.bind(process);
  lock(process, 'abort', denied('process.abort()'));
  lock(process, 'chdir', denied('process.chdir()'));
  lock(process, 'kill', (pid: number, signal?: string | number) => {
    if (ownPids.has(pid) || pid <= 0) denied(`process.kill(${pid})`)();
    return realKill(pid, signal);
  });
  lock(process, '_kill', denied('process._kill()'));
  const env = Object.freeze({ ...process.env });
  lock(process, 'env', new Proxy(env, {
    set: denied('writing process.env'),
    deleteProperty: denied('deleting from process.env'),
    defineProperty: denied('defining on process.env'),
  }));
}

