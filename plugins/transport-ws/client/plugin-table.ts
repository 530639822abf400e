/**
 * The client's plugin table for its heartbeats, so the server (and the dashboard) can show what
 * every host's core runs: the table goes out in the first heartbeat of a session, in the next one
 * after any plugin changes state, and every REFRESH_HEARTBEATS heartbeats in between (a server
 * that restarted without the client noticing learns it within that many).
 */
import type { Bus, Logger } from '../../../plugin-sdk/src/index.ts';
import { WIRE_LIMITS, type PluginSummary } from '../../../plugin-sdk/src/schemas/wire.ts';

/** Heartbeats between two reports of an unchanged table. */
export const REFRESH_HEARTBEATS = 60;

/** What the core's `core.plugins` service and `core.plugin.state` topic carry (the fields used here). */
interface CorePluginStatus {
  name: string;
  version?: string | null;
  state: string;
  restarts: number;
  lastError?: { code?: string; message?: string } | null;
}

// What the heartbeat schema takes: a row that does not fit (a folder with an invalid manifest can
// have any name) is left out rather than make the whole heartbeat invalid.
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const STATE = /^[a-z]{1,16}$/;
const ERROR_CODE = /^[A-Za-z][A-Za-z0-9_]*$/;

function summary(status: CorePluginStatus): PluginSummary {
  const error = status.lastError;
  return {
    name: status.name,
    ...(typeof status.version === 'string' && { version: status.version.slice(0, 32) }),
    state: status.state,
    restarts: status.restarts,
    ...(error && typeof error.code === 'string' && ERROR_CODE.test(error.code) && {
      error: { code: error.code.slice(0, 64), message: String(error.message ?? '').slice(0, 512) },
    }),
  };
}

export class PluginTableReporter {
  readonly #table = new Map<string, PluginSummary>();
  #changed = true;
  #sinceReport = 0;
  readonly #dispose: () => void;

  constructor(bus: Bus, log: Logger) {
    this.#dispose = bus.subscribe('core.plugin.state', (data) => this.#update(data as CorePluginStatus));
    bus.request<CorePluginStatus[]>('core.plugins')
      .then((list) => {
        for (const status of list) if (!this.#table.has(status.name)) this.#update(status);
      })
      .catch((err: unknown) => log.warn({ err: String(err) }, 'could not read the plugin table for the heartbeats'));
  }

  /** A new session began: its first heartbeat carries the table. */
  sessionStarted(): void {
    this.#changed = true;
  }

  /** The table when this heartbeat should carry it, else undefined. */
  take(): PluginSummary[] | undefined {
    this.#sinceReport++;
    if (!this.#changed && this.#sinceReport < REFRESH_HEARTBEATS) return undefined;
    if (this.#table.size === 0) return undefined;
    this.#changed = false;
    this.#sinceReport = 0;
    return [...this.#table.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).slice(0, WIRE_LIMITS.maxPluginsReported);
  }

  close(): void {
    this.#dispose();
  }

  #update(status: CorePluginStatus): void {
    if (typeof status?.name !== 'string' || !NAME.test(status.name) || typeof status.state !== 'string' || !STATE.test(status.state)) return;
    if (!Number.isSafeInteger(status.restarts) || status.restarts < 0) return;
    this.#table.set(status.name, summary(status));
    this.#changed = true;
  }
}
