import { expect } from 'chai';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { BoltError } from '../../../../plugin-sdk/src/errors.ts';
import type { TaskAckMessage, TaskDispatchMessage, WireMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { ClockEstimator, localClock, serverNow } from '../../protocol/clock.ts';
import { createDecoder, type Handler } from '../../protocol/codec.ts';
import { signCommand, verifyCommand } from '../../protocol/command.ts';
import { createClientHandshake, createServerHandshake } from '../../protocol/handshake.ts';
import { generateIdentity, importPublicKey, type Identity } from '../../protocol/identity.ts';
import { ReplayGuard } from '../../protocol/replay-guard.ts';
import type { Session } from '../../protocol/session.ts';
import { tempDir } from './helpers.ts';

/**
 * Two peers over a real WebSocket on 127.0.0.1: a minimal server (accepts a client, answers a clock
 * ping, sends a signed dispatch) and a minimal client (handshakes, estimates its clock offset,
 * verifies the dispatch, acks it). The transport plugin will do the same with more care.
 */
describe('transport-ws protocol: two peers over a loopback WebSocket', function () {
  this.timeout(15_000);
  const serverId = generateIdentity();
  let wss: WebSocketServer;
  let url: string;
  const accepted = new Set<string>();
  const serverLog: string[] = [];

  before(async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: '/agent', maxPayload: 1024 * 1024 });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/agent`;
    wss.on('connection', (socket) => serveAgent(socket));
  });
  after(async () => {
    for (const client of wss.clients) client.terminate();
    await new Promise((resolve) => wss.close(resolve));
  });

  function serveAgent(socket: WebSocket): void {
    const handshake = createServerHandshake({
      identity: serverId,
      role: 'server',
      acceptRoles: ['client'],
      authorize: (peer) => peer.role === 'client' && accepted.has(peer.fingerprint),
    });
    let session: Session | null = null;
    const step: Handler = (message) => {
      const { send, session: done } = handshake.next(message);
      socket.send(JSON.stringify(send));
      if (done) session = done;
    };
    // Once the client has its clock offset, dispatch a command to it: signed once, sealed per session.
    const onPing: Handler = (m) => {
      if (m.type !== 'clock.ping') return;
      socket.send(session!.seal({ v: 1, type: 'clock.pong', id: `p-${m.id}`, t0: m.t0, t1: Date.now(), t2: Date.now() }));
      const dispatch = signCommand(
        { v: 1, type: 'task.dispatch', id: 'cmd-1', runId: 'run-1', taskId: 'hello', action: 'shell', with: { run: 'echo hi' }, startAt: null, timeoutMs: 10_000, expiresAt: Date.now() + 60_000 },
        serverId.privateKey,
      );
      socket.send(session!.seal(dispatch));
    };
    const handshakeDecoder = createDecoder('client->server', new Map([['hello', step], ['auth', step]]));
    const sessionDecoder = createDecoder(
      'client->server',
      new Map<string, Handler>([
        ['clock.ping', onPing],
        ['task.ack', (m) => serverLog.push(`ack ${(m as TaskAckMessage).ref} ${(m as TaskAckMessage).accepted}`)],
      ]),
    );
    socket.on('message', (data: Buffer) => {
      try {
        const result = session === null ? handshakeDecoder.decode(data) : sessionDecoder.decode(session.open(data));
        if (!result.ok) throw new BoltError(result.code, result.message);
      } catch (err) {
        const code = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_MALFORMED';
        serverLog.push(`refused ${code}`);
        socket.send(JSON.stringify({ v: 1, type: 'error', id: 'e1', code, message: (err as Error).message.slice(0, 1000) }));
        socket.close(1008);
      }
    });
  }

  /** Runs a client until it has acked a dispatch, or failed; resolves with what it saw. */
  function runClient(identity: Identity, dataDir: string): Promise<string[]> {
    const seen: string[] = [];
    const socket = new WebSocket(url);
    const handshake = createClientHandshake({ identity, role: 'client', expectRole: 'server', pinnedKey: serverId.publicKeyBase64, host: 'loopback-host' });
    const guard = ReplayGuard.open(dataDir);
    const clock = new ClockEstimator();
    let session: Session | null = null;
    return new Promise<string[]>((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`client timed out; saw ${seen.join(', ')}`)), 10_000);
      const finish = () => {
        clearTimeout(deadline);
        guard.close();
        socket.close();
        resolve(seen);
      };
      const onHandshake: Handler = (message) => {
        seen.push(message.type);
        if (message.type === 'error') return finish();
        const { send, session: done } = handshake.next(message);
        if (send) socket.send(JSON.stringify(send));
        if (done) {
          session = done;
          socket.send(done.seal({ v: 1, type: 'clock.ping', id: 'ping-1', t0: localClock() }));
        }
      };
      const handshakeDecoder = createDecoder('server->client', new Map([['challenge', onHandshake], ['welcome', onHandshake], ['error', onHandshake]]));
      const sessionDecoder = createDecoder(
        'server->client',
        new Map<string, Handler>([
          ['clock.pong', (m: WireMessage) => {
            if (m.type !== 'clock.pong') return;
            clock.add({ t0: m.t0, t1: m.t1, t2: m.t2, t3: localClock() });
            seen.push('clock.pong');
          }],
          ['task.dispatch', (m: WireMessage) => {
            // The pinned key, as the client stored it on first contact.
            const command = verifyCommand(m as TaskDispatchMessage, importPublicKey(serverId.publicKeyBase64), { now: serverNow(clock.estimate()!.offsetMs, Date.now()), replayGuard: guard });
            seen.push(`dispatch ${command.id} ${String(command.with.run)}`);
            socket.send(session!.seal({ v: 1, type: 'task.ack', id: 'a1', ref: command.id, runId: command.runId, taskId: command.taskId, accepted: true }));
            finish();
          }],
        ]),
      );
      socket.on('open', () => socket.send(JSON.stringify(handshake.next().send)));
      socket.on('message', (data: Buffer) => {
        try {
          const result = session === null ? handshakeDecoder.decode(data) : sessionDecoder.decode(session.open(data));
          if (!result.ok) throw new BoltError(result.code, result.message);
        } catch (err) {
          clearTimeout(deadline);
          socket.terminate();
          reject(err);
        }
      });
      socket.on('error', reject);
    });
  }

  async function waitFor(predicate: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; server saw ${serverLog.join(', ')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it('an accepted client completes the handshake, measures its clock offset, verifies a signed dispatch and acks it', async () => {
    const clientId = generateIdentity();
    accepted.add(clientId.fingerprint);
    const seen = await runClient(clientId, tempDir());
    expect(seen).to.deep.equal(['challenge', 'welcome', 'clock.pong', 'dispatch cmd-1 echo hi']);
    await waitFor(() => serverLog.includes('ack cmd-1 true'), 'the ack');
  });

  it('a client whose key is not accepted is told so and disconnected', async () => {
    const seen = await runClient(generateIdentity(), tempDir());
    expect(seen).to.deep.equal(['challenge', 'error']);
    await waitFor(() => serverLog.includes('refused BOLT_ERR_WIRE_PEER_NOT_ACCEPTED'), 'the refusal');
  });
});
