/**
 * transport-ws: Bolt's wire protocol over WebSocket, for every role of the process. The server
 * role serves the HTTP API and /agent, the sink role /ingest, the client role connects to both.
 * Server and sink in one process share the host key and the accept list.
 */
import { defineTransport } from 'bolt-plugin-sdk';
import { loadOrCreateIdentity } from './protocol/index.ts';
import { TrustStore } from './server/trust-store.ts';
import { startClientRole } from './roles/client.ts';
import { startServerRole } from './roles/server.ts';
import { startSinkRole } from './roles/sink.ts';
import type { RunningRole, TransportSettings } from './roles/settings.ts';

let running: RunningRole[] = [];
let trust: TrustStore | null = null;

export default defineTransport<TransportSettings>({
  async start(ctx) {
    const identity = loadOrCreateIdentity(ctx.dataDir);
    const roles = new Set(ctx.roles);
    if (roles.has('server') || roles.has('sink')) {
      trust = TrustStore.open(ctx.dataDir, {
        autoAccept: ctx.options.autoAccept === true,
        onError: (err) => ctx.log.error({ err: String(err) }, 'trust store write failed'),
      });
    }
    const sink = roles.has('sink') ? await startSinkRole(ctx, identity, trust!, !roles.has('server')) : null;
    if (sink) running.push(sink);
    if (roles.has('server')) running.push(await startServerRole(ctx, identity, trust!, sink && { port: sink.port, secure: sink.secure }));
    if (roles.has('client')) running.push(await startClientRole(ctx, identity));
  },
  async stop() {
    for (const role of running.reverse()) await role.close();
    running = [];
    trust?.close();
    trust = null;
  },
});
