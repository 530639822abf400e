import { readFileSync, readlinkSync } from 'node:fs';

/**
 * The calling thread's id and the CPU time it has run so far, from /proc/thread-self (Linux 3.17+),
 * or null where procfs does not have it. Plugins report it in their stats so a benchmark can tell
 * their worker thread apart from the others of the process.
 */
export function ownThread(): { tid: number; cpuMs: number } | null {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').at(-1));
    const cpuNs = Number(readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')[0]);
    return Number.isInteger(tid) && Number.isFinite(cpuNs) ? { tid, cpuMs: cpuNs / 1e6 } : null;
  } catch {
    return null;
  }
}
