/**
 * A test plugin that shows, from inside its own thread, how large V8 lets its young generation
 * grow, and the environment it was given (what a task's shell it started would inherit).
 */

/** What `heap-probe.young` (or a call to the pool variant) answers. */
export interface HeapProbe {
  /** The largest new space seen while keeping objects alive across scavenges, in MiB. */
  largestNewSpaceMb: number;
  mallocArenaMax: string | null;
  launcherEnv: string | null;
}

const PROBE = `
import v8 from 'node:v8';

function largestNewSpaceMb() {
  const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
  let largest = newSpace();
  let kept = [];
  // Objects that survive scavenges make V8 grow the young generation up to its limit
  // (2 MiB of semi-spaces for a 3 MiB young generation, 32 MiB for V8's default).
  for (let i = 0; i < 300000; i++) {
    kept.push({ i, text: 'x' + i });
    if (kept.length > 50000) kept = kept.slice(25000);
    if (i % 1000 === 0) largest = Math.max(largest, newSpace());
  }
  return largest / (1024 * 1024);
}

function heapProbe() {
  return {
    largestNewSpaceMb: largestNewSpaceMb(),
    mallocArenaMax: process.env.MALLOC_ARENA_MAX ?? null,
    launcherEnv: process.env.BOLT_LAUNCHER_ENV ?? null,
  };
}
`;

/** A worker plugin providing `heap-probe.young`. */
export const HEAP_PROBE_SOURCE = `${PROBE}
export default { start(ctx) { ctx.bus.provide('heap-probe.young', heapProbe); } };
`;

/** A pool plugin (isolation "pool") whose call answers the same. */
export const HEAP_PROBE_POOL_SOURCE = `${PROBE}
export default function () { return heapProbe(); }
`;
