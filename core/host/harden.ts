/**
 * Hardening of a worker thread's `process` before plugin code loads. Worker threads share the
 * process with the core, so `process.kill(process.pid)` from a plugin would kill everything
 * (MEASURED.md, section 3). What cannot be blocked here (a plugin that spawns `kill -9` through
 * child_process, or its own Worker) is why untrusted plugins run with `isolation: "process"`.
 */
import { readFileSync } from 'node:fs';
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
  const ownGroup = processGroup();
  // process.kill() calls process._kill(); both get the same check, over the real _kill.
  const realInternalKill = (process as unknown as { _kill: (pid: number, signal: number) => number })._kill.bind(process);
  const allowed = (pid: number) => {
    // pid 0 is our own group, -1 every process we may signal, -G the group G.
    if (ownPids.has(pid) || pid === 0 || pid === -1 || (pid < 0 && -pid === ownGroup)) denied(`process.kill(${pid})`)();
  };
  const realKill = process.kill;
  lock(process, 'abort', denied('process.abort()'));
  lock(process, 'chdir', denied('process.chdir()'));
  lock(process, '_kill', (pid: number, signal: number) => {
    allowed(pid);
    return realInternalKill(pid, signal);
  });
  lock(process, 'kill', (pid: number, signal?: string | number) => {
    allowed(pid);
    return realKill.call(process, pid, signal);
  });
  const env = Object.freeze({ ...process.env });
  lock(process, 'env', new Proxy(env, {
    set: denied('writing process.env'),
    deleteProperty: denied('deleting from process.env'),
    defineProperty: denied('defining on process.env'),
  }));
}

/** This process's group id (field 5 of /proc/self/stat), or null where procfs is missing. */
function processGroup(): number | null {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[2]);
  } catch {
    return null;
  }
}
