/** The transport's settings (bolt.yaml `plugins.transport-ws`, defaults in plugin.json). */
export interface TransportSettings {
  heartbeatIntervalMs: number;
  commandTtlMs: number;
  handshakesPerSec: number;
  handshakeBurst: number;
  maxHandshakesInFlight: number;
  handshakeTimeoutMs: number;
  messagesPerSec: number;
  messageBurst: number;
  maxBufferedBytes: number;
}

/** What a running role gives back: how to stop it. */
export interface RunningRole {
  close(): Promise<void>;
}

/** The server's /agent URL from `--server` (path /agent added when the URL has none). */
export function agentUrl(server: string): string {
  const url = new URL(server);
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/agent';
  return url.toString();
}
