import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { WebSocket } from 'ws';
import type { ClockPongMessage, ErrorMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { generateIdentity } from '../../protocol/identity.ts';
import { WIRE_CLOSE } from '../../server/endpoint.ts';
import { cleanUp, rawRequest, startServer, tempDir, waitFor } from './harness.ts';
import { refusal, TestPeer } from './peer.ts';

describe('transport-ws server: WireEndpoint on a real socket', function () {
  this.timeout(15_000);
  afterEach(cleanUp);

  it('gives an accepted client a session whose welcome and clock.pong come from the endpoint', async () => {
    const server = await startServer({ autoAccept: true });
    const before = performance.timeOrigin + performance.now();
    const peer = await TestPeer.connect({ url: server.url, pinnedKey: server.identity.publicKeyBase64, host: 'web-01', labels: { zone: 'a' } });
    expect(peer.welcome.heartbeatIntervalMs).to.equal(1000);
    const pong = (await peer.ping()) as ClockPongMessage;
    const after = performance.timeOrigin + performance.now();
    expect(pong.t1).to.be.within(before, after);
    expect(pong.t2).to.be.at.least(pong.t1).and.at.most(after);

    const [conn] = server.endpoint.connections();
    expect(conn?.fingerprint).to.equal(peer.identity.fingerprint);
    expect(conn?.hello.host).to.equal('web-01');
    expect(conn?.hello.labels).to.deep.equal({ zone: 'a' });
    expect(conn?.address).to.equal('127.0.0.1');
    expect(conn?.sessionId).to.equal(peer.session.id);
    expect(server.events).to.deep.equal([`open ${peer.identity.fingerprint.slice(0, 8)} ${peer.session.id}`]);

    peer.send({ v: 1, type: 'heartbeat', id: 'hb-1', at: Date.now(), load1: 0.1, cpuPercent: 3, memAvailableBytes: 1e9, diskFreeBytes: 1e10, eventLoopLagMs: 0.5, clockOffsetMs: 0 });
    await waitFor(() => server.received.length === 1, 'the heartbeat handler');
    expect(server.received[0]?.message.type).to.equal('heartbeat');

    peer.close();
    await waitFor(() => server.events.length === 2, 'onClose');
    expect(server.events[1]).to.match(/ 1000 peer closed$/);
    expect(server.endpoint.stats()).to.include({ accepted: 1, connections: 0, handshakesInFlight: 0 });
  });

  it('refuses a new key as pending (4401) and records it; after accept the same key gets a session', async () => {
    const server = await startServer();
    const identity = generateIdentity();
    const refused = await refusal(TestPeer.connect({ url: server.url, identity, host: 'db-01', labels: { role: 'db' }, facts: { cpus: 2 } }));
    expect(refused.code).to.equal('BOLT_ERR_WIRE_PEER_NOT_ACCEPTED');
    expect(refused.closeCode).to.equal(WIRE_CLOSE.notAccepted);
    const [entry] = server.trust.list();
    expect(entry).to.include({ fingerprint: identity.fingerprint, publicKey: identity.publicKeyBase64, role: 'client', state: 'pending', host: 'db-01', address: '127.0.0.1' });
    expect(entry?.labels).to.deep.equal({ role: 'db' });
    expect(entry?.facts).to.deep.equal({ cpus: 2 });
    expect(server.endpoint.stats().refused['not-accepted']).to.equal(1);
    expect(server.events).to.deep.equal([]);

    server.trust.accept(identity.fingerprint.slice(0, 10));
    const peer = await TestPeer.connect({ url: server.url, identity });
    expect((await peer.ping()).type).to.equal('clock.pong');
  });

  it('keeps a rejected key out under autoAccept, and disconnect() drops its open session', async () => {
    const server = await startServer({ autoAccept: true });
    const identity = generateIdentity();
    const peer = await TestPeer.connect({ url: server.url, identity });
    server.trust.reject(identity.fingerprint, 'client');
    expect(server.endpoint.disconnect(identity.fingerprint, 'client')).to.equal(true);
    expect((await peer.closed).code).to.equal(WIRE_CLOSE.refused);

    const refused = await refusal(TestPeer.connect({ url: server.url, identity }));
    expect(refused.code).to.equal('BOLT_ERR_WIRE_PEER_NOT_ACCEPTED');
    expect(refused.closeCode).to.equal(WIRE_CLOSE.refused);
    expect(server.endpoint.stats().refused.rejected).to.equal(1);
    expect(server.trust.get(identity.fingerprint, 'client')?.state).to.equal('rejected');
  });

  it('never accepts a client key as a sink: refused where sinks are not served, pending where they are', async () => {
    const clientsOnly = await startServer({ autoAccept: true });
    const identity = generateIdentity();
    await TestPeer.connect({ url: clientsOnly.url, identity });
    const roleRefused = await refusal(TestPeer.connect({ url: clientsOnly.url, identity, role: 'sink' }));
    expect(roleRefused).to.include({ code: 'BOLT_ERR_WIRE_ROLE_REFUSED', closeCode: WIRE_CLOSE.refused });

    // Same trust file, an endpoint that serves sinks too, auto-accept on: the key is known as a client only.
    await clientsOnly.stop();
    const both = await startServer({ dir: clientsOnly.dir, autoAccept: true, roles: ['client', 'sink'] });
    const asSink = await refusal(TestPeer.connect({ url: both.url, identity, role: 'sink' }));
    expect(asSink).to.include({ code: 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED', closeCode: WIRE_CLOSE.notAccepted });
    expect(both.trust.get(identity.fingerprint, 'sink')?.state).to.equal('pending');
    expect(both.trust.get(identity.fingerprint, 'client')?.state).to.equal('accepted');
    // A fresh sink key is auto-accepted as a sink.
    const sink = await TestPeer.connect({ url: both.url, role: 'sink' });
    expect((await sink.ping()).type).to.equal('clock.pong');
  });

  it('closes only the connection that sends a 2 MiB frame (1009); another keeps working', async () => {
    const server = await startServer({ autoAccept: true });
    const big = await TestPeer.connect({ url: server.url });
    const other = await TestPeer.connect({ url: server.url });
    big.ws.send('x'.repeat(2 * 1024 * 1024));
    expect((await big.closed).code).to.equal(WIRE_CLOSE.tooBig);
    expect((await other.ping()).type).to.equal('clock.pong');
    expect(server.endpoint.stats()).to.include({ tooBig: 1, connections: 1 });
    expect(server.events.at(-1)).to.match(/ 1009 too big$/);
  });

  it('refuses an upgrade request with 5000 headers (431) and creates no WebSocket', async () => {
    const server = await startServer({ autoAccept: true });
    for (const header of [(i: number) => `a${i % 10}:b`, (i: number) => `x-filler-${i}: ${'v'.repeat(20)}`]) {
      const answer = await rawRequest(server.listener.port, [
        'GET /agent HTTP/1.1',
        'Host: 127.0.0.1',
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        ...Array.from({ length: 5000 }, (_, i) => header(i)),
      ]);
      expect(answer).to.match(/^HTTP\/1\.1 431 /);
    }
    expect(server.endpoint.stats()).to.include({ accepted: 0, handshakesInFlight: 0 });
    // The small headers reach the endpoint (and are counted); the big ones are cut off by Node's 16 KiB limit.
    expect(server.endpoint.stats().refused.headers).to.equal(1);
    await TestPeer.connect({ url: server.url });
  });

  it('answers garbage with sealed error codes, treats wire types as Map keys, and disconnects a persistent sender', async () => {
    const server = await startServer({ autoAccept: true, garbage: { maxBad: 8, windowMs: 10_000 } });
    const peer = await TestPeer.connect({ url: server.url });
    const cases: Array<[string, string]> = [
      ['not json', 'BOLT_ERR_WIRE_MALFORMED'],
      ['[1,2]', 'BOLT_ERR_WIRE_MALFORMED'],
      [JSON.stringify({ v: 1, type: '__proto__', id: 'g1' }), 'BOLT_ERR_WIRE_UNKNOWN_TYPE'],
      [JSON.stringify({ v: 1, type: 'constructor', id: 'g2' }), 'BOLT_ERR_WIRE_UNKNOWN_TYPE'],
      [JSON.stringify({ v: 1, type: 'toString', id: 'g3' }), 'BOLT_ERR_WIRE_UNKNOWN_TYPE'],
      [JSON.stringify({ v: 1, type: 'task.dispatch', id: 'g4' }), 'BOLT_ERR_WIRE_UNKNOWN_TYPE'],
      [JSON.stringify({ v: 1, type: 'clock.ping', id: 'g5', t0: 'soon' }), 'BOLT_ERR_WIRE_MALFORMED'],
      [JSON.stringify({ v: 2, type: 'clock.ping', id: 'g6', t0: 1 }), 'BOLT_ERR_WIRE_VERSION'],
    ];
    for (const [body, code] of cases) {
      peer.sendBody(body);
      expect(((await peer.next('error')) as ErrorMessage).code, body).to.equal(code);
    }
    // A well-formed error from the peer is not answered (no error ping-pong), and the session still works.
    peer.send({ v: 1, type: 'error', id: 'e1', code: 'BOLT_ERR_WIRE_MALFORMED', message: 'yours' });
    expect((await peer.ping()).type).to.equal('clock.pong');
    expect(peer.inbox).to.deep.equal([]);
    // The 9th bad message within the window ends the connection.
    peer.sendBody('still not json');
    expect((await peer.closed).code).to.equal(WIRE_CLOSE.policy);
    expect(server.endpoint.stats()).to.include({ garbage: 9, garbageDisconnects: 1 });

    // A frame that is not sealed with the session fails session.open: closed at once.
    const unsealed = await TestPeer.connect({ url: server.url });
    unsealed.ws.send(JSON.stringify({ v: 1, type: 'clock.ping', id: 'p1', t0: 1 }));
    expect((await unsealed.closed).code).to.equal(WIRE_CLOSE.policy);
    expect(server.endpoint.stats().badFrames).to.equal(1);
  });

  it('closes a peer that exceeds its message rate with 1008', async () => {
    const server = await startServer({ autoAccept: true, messagesPerSec: 10, messageBurst: 20 });
    const peer = await TestPeer.connect({ url: server.url });
    for (let i = 0; i < 50; i++) peer.send({ v: 1, type: 'clock.ping', id: `p${i}`, t0: 1 });
    expect((await peer.closed).code).to.equal(WIRE_CLOSE.policy);
    expect(server.endpoint.stats().rateLimited).to.equal(1);
    expect(peer.inbox.length).to.be.at.most(20);
  });

  it('drops a peer that stops reading instead of buffering 50 MiB for it', async () => {
    const server = await startServer({ autoAccept: true });
    const peer = await TestPeer.connect({ url: server.url });
    const socket = (peer.ws as unknown as { _socket: net.Socket })._socket;
    socket.pause();
    const conn = server.endpoint.connections()[0]!;
    const message = JSON.stringify({ v: 1, type: 'clock.pong', id: 'big', t0: 1, t1: 1, t2: 1, pad: 'p'.repeat(64 * 1024) });
    const memBefore = process.memoryUsage();
    let queued = 0;
    while (queued < 50 * 1024 * 1024 && conn.sendText(message)) queued += message.length;
    const memAfter = process.memoryUsage();
    expect(queued, 'bytes queued before the drop').to.be.below(50 * 1024 * 1024);
    expect(conn.open).to.equal(false);
    expect(server.endpoint.stats()).to.include({ droppedSlow: 1, connections: 0 });
    expect(server.events.at(-1)).to.match(/ slow peer$/);
    // The bound is 4 MiB of unsent data; kernel socket buffers hold the rest of what was queued.
    // Unbounded, the 50 MiB would sit in the socket's write queue (heap strings): +50 MiB heap and RSS.
    const grown = (key: 'heapUsed' | 'arrayBuffers' | 'rss') => memAfter[key] - memBefore[key];
    expect(grown('heapUsed') + grown('arrayBuffers'), 'heap + buffer growth').to.be.below(20 * 1024 * 1024);
    expect(grown('rss'), 'rss growth').to.be.below(32 * 1024 * 1024);
    socket.resume();
    await peer.closed;
  });

  it('stops reading from every peer while paused, one that connects meanwhile included, until resumed or the hold runs out', async () => {
    const server = await startServer({ autoAccept: true });
    const heartbeat = (id: string) => ({ v: 1, type: 'heartbeat', id, at: Date.now(), load1: 0.1, cpuPercent: 3, memAvailableBytes: 1e9, diskFreeBytes: 1e10, eventLoopLagMs: 0.5, clockOffsetMs: 0 });
    const first = await TestPeer.connect({ url: server.url });
    server.endpoint.pauseReading(60_000);
    const second = await TestPeer.connect({ url: server.url });
    first.send(heartbeat('a1'));
    second.send(heartbeat('b1'));
    // Handshakes go on while paused; the frames above reached the server's sockets before this one's.
    const third = await TestPeer.connect({ url: server.url });
    expect(server.received).to.deep.equal([]);
    expect(server.endpoint.stats()).to.include({ readingPaused: true, readPauses: 1, connections: 3 });

    server.endpoint.resumeReading();
    await waitFor(() => server.received.length === 2, 'both heartbeats after resumeReading');
    expect(server.received.map((r) => (r.message as { id: string }).id).sort()).to.deep.equal(['a1', 'b1']);

    server.endpoint.pauseReading(100);
    third.send(heartbeat('c1'));
    await waitFor(() => server.received.length === 3, 'the heartbeat once the hold ran out, without resumeReading');
    expect(server.endpoint.stats()).to.include({ readingPaused: false, readPauses: 2 });
  });

  it('answers a burst of 300 upgrades over the handshake rate with 503 and Retry-After, no WebSocket', async () => {
    const server = await startServer({ autoAccept: true, admission: { handshakesPerSec: 50, burst: 50 } });
    const outcomes = await Promise.all(
      Array.from({ length: 300 }, () => new Promise<string>((resolve) => {
        const ws = new WebSocket(server.url, { perMessageDeflate: false });
        ws.on('open', () => {
          resolve('open');
          ws.terminate();
        });
        ws.on('unexpected-response', (req, res) => {
          resolve(`${res.statusCode} retry-after=${res.headers['retry-after']}`);
          req.destroy();
        });
        ws.on('error', (err) => resolve(`error ${err.message}`));
      })),
    );
    const opened = outcomes.filter((o) => o === 'open').length;
    const tooMany = outcomes.filter((o) => /^503 retry-after=[1-9]\d*$/.test(o)).length;
    expect(opened + tooMany, outcomes.find((o) => o !== 'open' && !o.startsWith('503'))).to.equal(300);
    // 50 at once, plus 50/s refill while the burst lasts (a slow, shared machine stretches it).
    expect(opened).to.be.at.least(50);
    expect(tooMany).to.be.at.least(50);
    expect(server.endpoint.stats().refused.rate).to.equal(tooMany);
  });

  it('caps unfinished handshakes, and frees a slot when the handshake deadline passes', async () => {
    const server = await startServer({ autoAccept: true, admission: { maxInFlight: 3 }, handshakeTimeoutMs: 300 });
    const silent = await Promise.all(Array.from({ length: 3 }, () => openSilent(server.url)));
    const refused = await refusal(TestPeer.connect({ url: server.url }));
    expect(refused).to.include({ status: 503, retryAfter: '1' });
    expect(server.endpoint.stats().refused['in-flight']).to.equal(1);
    // The silent ones never say hello: cut off at the deadline, after which there is room again.
    await Promise.all(silent.map((ws) => new Promise((resolve) => ws.once('close', resolve))));
    await waitFor(() => server.endpoint.stats().handshakesInFlight === 0, 'the slots to be freed');
    expect(server.endpoint.stats().refused['handshake-timeout']).to.equal(3);
    await TestPeer.connect({ url: server.url });
  });

  it('closes the older connection when the same identity connects again (no duplicate hosts)', async () => {
    const server = await startServer({ autoAccept: true });
    const identity = generateIdentity();
    const first = await TestPeer.connect({ url: server.url, identity });
    const second = await TestPeer.connect({ url: server.url, identity });
    expect((await first.closed).code).to.equal(WIRE_CLOSE.replaced);
    const fp = identity.fingerprint.slice(0, 8);
    expect(server.events).to.deep.equal([
      `open ${fp} ${first.session.id}`,
      `close ${fp} ${first.session.id} ${WIRE_CLOSE.replaced} replaced`,
      `open ${fp} ${second.session.id}`,
    ]);
    expect(server.endpoint.connections().map((c) => c.sessionId)).to.deep.equal([second.session.id]);
    expect((await second.ping()).type).to.equal('clock.pong');
  });

  it('keeps accepted keys across a restart, with no operator action', async () => {
    const first = await startServer();
    const identity = generateIdentity();
    await refusal(TestPeer.connect({ url: first.url, identity }));
    first.trust.accept(identity.fingerprint);
    await first.stop();
    const second = await startServer({ dir: first.dir });
    const peer = await TestPeer.connect({ url: second.url, identity });
    expect((await peer.ping()).type).to.equal('clock.pong');
    expect(second.trust.get(identity.fingerprint, 'client')?.state).to.equal('accepted');
  });

  it('serves wss:// with a self-signed certificate given as cert and key files', async () => {
    const dir = tempDir();
    const certFile = path.join(dir, 'cert.pem');
    const keyFile = path.join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ed25519', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
    const ca = fs.readFileSync(certFile);
    const server = await startServer({ autoAccept: true, tls: { certFile, keyFile } });
    expect(server.url).to.match(/^wss:\/\/127\.0\.0\.1:\d+\/agent$/);
    const peer = await TestPeer.connect({ url: server.url, ca, pinnedKey: server.identity.publicKeyBase64 });
    expect((await peer.ping()).type).to.equal('clock.pong');
    // Without the CA the client refuses the certificate.
    const untrusted = await TestPeer.connect({ url: server.url }).then(() => 'accepted', (err: Error) => err.message);
    expect(untrusted).to.match(/self[- ]signed/i);
    const health = await new Promise<number>((resolve, reject) => {
      https.get(`${server.listener.url('/api/nothing')}`, { ca }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(health).to.equal(404);
  });
});

/** Opens a WebSocket that never starts the handshake. */
function openSilent(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
  });
}
