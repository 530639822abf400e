import { expect } from 'chai';
import type { AuthMessage, ChallengeMessage, HelloMessage, WelcomeMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { createClientHandshake, createServerHandshake } from '../../protocol/handshake.ts';
import { generateIdentity } from '../../protocol/identity.ts';
import type { PeerIdentity } from '../../protocol/session.ts';
import { acrossWire, expectBoltError, handshakePair } from './helpers.ts';

describe('transport-ws protocol: handshake', () => {
  const serverId = generateIdentity();
  const clientId = generateIdentity();
  const acceptAll = () => true;

  function serverOpts(overrides: Partial<Parameters<typeof createServerHandshake>[0]> = {}) {
    return { identity: serverId, role: 'server' as const, acceptRoles: ['client'] as const, authorize: acceptAll, ...overrides };
  }
  function clientOpts(overrides: Partial<Parameters<typeof createClientHandshake>[0]> = {}) {
    return { identity: clientId, role: 'client' as const, expectRole: 'server' as const, host: 'web-01', ...overrides };
  }

  it('client and server agree on a session and exchange frames both ways', () => {
    const seen: PeerIdentity[] = [];
    const { client, server } = handshakePair({
      client: { ...clientOpts({ pinnedKey: serverId.publicKeyBase64, labels: { role: 'web' }, facts: { cpus: 2 } }) },
      server: serverOpts({ authorize: (peer) => (seen.push(peer), true) }),
    });
    expect(client.id).to.equal(server.id).and.to.match(/^[A-Za-z0-9_-]{22}$/);
    expect(client.peer).to.include({ role: 'server', publicKey: serverId.publicKeyBase64, fingerprint: serverId.fingerprint });
    expect(server.peer).to.include({ role: 'client', publicKey: clientId.publicKeyBase64, fingerprint: clientId.fingerprint });
    expect(server.peer.hello?.labels).to.deep.equal({ role: 'web' });
    expect(seen.map((p) => [p.role, p.fingerprint])).to.deep.equal([['client', clientId.fingerprint]]);
    for (let i = 0; i < 3; i++) {
      expect(JSON.parse(client.open(server.seal({ n: i, from: 'server' })))).to.deep.equal({ n: i, from: 'server' });
      expect(JSON.parse(server.open(client.seal({ n: i, from: 'client' })))).to.deep.equal({ n: i, from: 'client' });
    }
  });

  it('a sink connects to the server, and a client to a sink, each with its own role', () => {
    const sinkId = generateIdentity();
    const toServer = handshakePair({
      client: { identity: sinkId, role: 'sink', expectRole: 'server' },
      server: serverOpts({ acceptRoles: ['sink'] }),
      directions: ['sink->server', 'server->sink'],
    });
    expect(toServer.server.peer.role).to.equal('sink');
    const toSink = handshakePair({
      client: clientOpts({ expectRole: 'sink', pinnedKey: sinkId.publicKeyBase64 }),
      server: { identity: sinkId, role: 'sink', acceptRoles: ['client'], authorize: acceptAll },
      directions: ['client->sink', 'sink->client'],
    });
    expect(toSink.client.peer).to.include({ role: 'sink', fingerprint: sinkId.fingerprint });
  });

  it('every connection gets fresh keys: two handshakes of the same hosts share no session', () => {
    const a = handshakePair({ client: clientOpts(), server: serverOpts() });
    const b = handshakePair({ client: clientOpts(), server: serverOpts() });
    expect(a.client.id).to.not.equal(b.client.id);
    expectBoltError(() => b.server.open(a.client.seal({ x: 1 })), 'BOLT_ERR_WIRE_WRONG_SESSION');
  });

  it('refuses a client that presents a public key it does not hold', () => {
    // The impostor announces an accepted host's public key but can only sign with its own key.
    const victim = generateIdentity();
    const accepted = new Set([victim.fingerprint]);
    const err = expectBoltError(
      () =>
        handshakePair({
          client: clientOpts({ identity: { ...clientId, publicKeyBase64: victim.publicKeyBase64 } }),
          server: serverOpts({ authorize: (peer) => accepted.has(peer.fingerprint) }),
        }),
      'BOLT_ERR_WIRE_HANDSHAKE_FAILED',
    );
    expect(err.message).to.match(/client's transcript signature does not verify/);
  });

  it('refuses a server whose challenge is not signed by the key it presents', () => {
    const client = createClientHandshake(clientOpts());
    const server = createServerHandshake(serverOpts({ identity: { ...serverId, publicKeyBase64: generateIdentity().publicKeyBase64 } }));
    const challenge = server.next(client.next().send!).send!;
    const err = expectBoltError(() => client.next(acrossWire('server->client', challenge)), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    expect(err.message).to.match(/signature/);
  });

  it('fails with BOLT_ERR_WIRE_SERVER_KEY_CHANGED when the server key differs from the pinned one', () => {
    const impostor = generateIdentity();
    const client = createClientHandshake(clientOpts({ pinnedKey: serverId.publicKeyBase64 }));
    const server = createServerHandshake(serverOpts({ identity: impostor }));
    const challenge = server.next(client.next().send!).send!;
    const err = expectBoltError(() => client.next(challenge), 'BOLT_ERR_WIRE_SERVER_KEY_CHANGED');
    expect(err.details).to.deep.equal({ presented: impostor.fingerprint, pinned: serverId.fingerprint });
    expect(err.message).to.include(impostor.shortFingerprint).and.include(serverId.shortFingerprint);
  });

  it('refuses a client key claiming the sink or server role at an endpoint that expects clients', () => {
    for (const role of ['sink', 'server'] as const) {
      const server = createServerHandshake(serverOpts());
      const hello = createClientHandshake(clientOpts({ role: role as 'sink' })).next().send as HelloMessage;
      const err = expectBoltError(() => server.next({ ...hello, role: role as 'sink' }), 'BOLT_ERR_WIRE_ROLE_REFUSED');
      expect(err.details).to.deep.include({ role });
    }
    // On the wire, "server" is not even a role a hello may carry.
    const hello = createClientHandshake(clientOpts()).next().send as HelloMessage;
    expectBoltError(() => acrossWire('client->server', { ...hello, role: 'server' as 'client' }), 'BOLT_ERR_WIRE_MALFORMED');
  });

  it('refuses an endpoint that answers in another role than the one expected', () => {
    const client = createClientHandshake(clientOpts({ expectRole: 'server' }));
    const sink = createServerHandshake({ identity: serverId, role: 'sink', acceptRoles: ['client'], authorize: acceptAll });
    expectBoltError(() => client.next(sink.next(client.next().send!).send!), 'BOLT_ERR_WIRE_ROLE_REFUSED');
  });

  it('a role changed in transit breaks the signatures', () => {
    const client = createClientHandshake(clientOpts({ role: 'sink' }));
    const server = createServerHandshake(serverOpts({ acceptRoles: ['client', 'sink'] }));
    const hello = client.next().send as HelloMessage;
    const challenge = server.next({ ...hello, role: 'client' }).send!;
    expectBoltError(() => client.next(challenge), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
  });

  it('labels altered in transit break the signatures', () => {
    const client = createClientHandshake(clientOpts({ labels: { role: 'loadgen' } }));
    const server = createServerHandshake(serverOpts());
    const hello = client.next().send as HelloMessage;
    const challenge = server.next({ ...hello, labels: { role: 'web' } }).send!;
    expectBoltError(() => client.next(challenge), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
  });

  it('refuses a proven key that the accept list does not hold, naming its fingerprint and role', () => {
    const err = expectBoltError(
      () => handshakePair({ client: clientOpts(), server: serverOpts({ authorize: (peer) => peer.fingerprint !== clientId.fingerprint }) }),
      'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED',
    );
    expect(err.details).to.deep.include({ fingerprint: clientId.fingerprint, role: 'client' });
  });

  it('an auth recorded from one handshake does not complete another', () => {
    const first = createClientHandshake(clientOpts());
    const firstServer = createServerHandshake(serverOpts());
    const hello = first.next().send as HelloMessage;
    const auth = first.next(firstServer.next(hello).send!).send as AuthMessage;
    // An attacker replays the same hello and auth to a new connection: the server's nonce differs.
    const replayServer = createServerHandshake(serverOpts());
    replayServer.next(hello);
    expectBoltError(() => replayServer.next(auth), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
  });

  it('refuses a low-order ephemeral key', () => {
    const hello = createClientHandshake(clientOpts()).next().send as HelloMessage;
    const server = createServerHandshake(serverOpts());
    expectBoltError(() => server.next({ ...hello, ephemeralKey: Buffer.alloc(32).toString('base64') }), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
  });

  it('refuses messages out of order, and everything after a failure or completion', () => {
    const server = createServerHandshake(serverOpts());
    expectBoltError(() => server.next({ v: 1, type: 'auth', id: 'a', signature: 'A'.repeat(86) + '==' }), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    const err = expectBoltError(() => server.next(createClientHandshake(clientOpts()).next().send!), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    expect(err.message).to.match(/already failed/);
    const client = createClientHandshake(clientOpts());
    const s2 = createServerHandshake(serverOpts());
    const challenge = s2.next(client.next().send!).send!;
    const auth = client.next(challenge).send!;
    // A second challenge where the welcome belongs.
    const c3 = createClientHandshake(clientOpts());
    const challenge3 = createServerHandshake(serverOpts()).next(c3.next().send!).send!;
    c3.next(challenge3);
    expect(() => c3.next(challenge3)).to.throw(/Expected welcome but got 'challenge'/);
    const done = client.next(s2.next(auth).send!);
    expect(done.session).to.not.equal(null);
    expect(expectBoltError(() => client.next(), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED').message).to.match(/already complete/);
    expect(expectBoltError(() => s2.next(auth), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED').message).to.match(/already complete/);
  });

  it('the welcome tells the heartbeat interval, server time and sink, and nobody can alter it', () => {
    const sink = { url: 'ws://127.0.0.1:7701/ingest', publicKey: generateIdentity().publicKeyBase64 };
    const opts = serverOpts({ heartbeatIntervalMs: 2500, sink, now: () => 1_700_000_000_000 });
    const { client } = handshakePair({ client: clientOpts(), server: opts });
    expect(client.welcome).to.deep.include({ heartbeatIntervalMs: 2500, sink, serverTime: 1_700_000_000_000, sessionId: client.id });
    for (const change of [{ heartbeatIntervalMs: 100 }, { sink: { ...sink, url: 'ws://evil:7701/ingest' } }, { serverTime: 1 }, { id: 'other' }]) {
      const c = createClientHandshake(clientOpts());
      const s = createServerHandshake(opts);
      const auth = c.next(s.next(c.next().send!).send!).send!;
      const welcome = s.next(auth).send as WelcomeMessage;
      expectBoltError(() => c.next({ ...welcome, ...change }), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    }
  });

  it('a welcome from another connection does not complete this handshake', () => {
    const run = () => {
      const c = createClientHandshake(clientOpts());
      const s = createServerHandshake(serverOpts());
      const auth = c.next(s.next(c.next().send!).send!).send!;
      return { c, welcome: s.next(auth).send as WelcomeMessage };
    };
    const a = run();
    const b = run();
    expectBoltError(() => b.c.next(a.welcome), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
  });

  it('a refusal after auth reaches the client as an error with the server\'s code', () => {
    const c = createClientHandshake(clientOpts());
    const s = createServerHandshake(serverOpts({ authorize: () => false }));
    const auth = c.next(s.next(c.next().send!).send!).send!;
    const refusal = expectBoltError(() => s.next(auth), 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED');
    const err = expectBoltError(() => c.next(acrossWire('server->client', { v: 1, type: 'error', id: 'e', code: refusal.code, message: refusal.message })), 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    expect(err.details).to.deep.equal({ peerCode: 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED' });
  });

  it('surfaces the code of a peer that refuses the handshake', () => {
    const client = createClientHandshake(clientOpts());
    client.next();
    const err = expectBoltError(
      () => client.next({ v: 1, type: 'error', id: 'e1', code: 'BOLT_ERR_WIRE_ROLE_REFUSED', message: 'no' }),
      'BOLT_ERR_WIRE_HANDSHAKE_FAILED',
    );
    expect(err.details).to.deep.equal({ peerCode: 'BOLT_ERR_WIRE_ROLE_REFUSED' });
  });
});
