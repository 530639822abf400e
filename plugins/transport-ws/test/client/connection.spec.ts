import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TaskCancelMessage, TaskDispatchMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { PINS_FILE, PinStore, pinOrigin } from '../../client/pins.ts';
import { fingerprint, generateIdentity, localClock, REPLAY_GUARD_FILE } from '../../protocol/index.ts';
import { clientFactory, recordingLogger, tempDir } from './helpers.ts';
import { MiniServer, waitFor } from './mini-server.ts';

const FAST_BACKOFF = { baseMs: 20, capMs: 100 };

describe('transport-ws client: WireClient against a loopback responder', function () {
  this.timeout(20_000);
  const makeClient = clientFactory();
  let servers: MiniServer[] = [];

  async function startServer(options: Parameters<typeof MiniServer.start>[0] = {}): Promise<MiniServer> {
    const server = await MiniServer.start(options);
    servers.push(server);
    return server;
  }

  afterEach(async () => {
    await Promise.all(servers.map((s) => s.close()));
    servers = [];
  });

  it('connects, then sends heartbeats at the interval the welcome names, carrying the health record', async () => {
    const server = await startServer({ heartbeatIntervalMs: 200 });
    const connected: string[] = [];
    const health = { load1: 1.5, cpuPercent: 12.5, memAvailableBytes: 2e9, diskFreeBytes: 3e10, eventLoopLagMs: 0.4 };
    const client = makeClient({ url: server.url, health: () => health, onConnected: (session, welcome) => connected.push(`${session.id} ${welcome.heartbeatIntervalMs}`) });
    client.start();
    await waitFor(() => server.peers[0] !== undefined && server.peers[0].heartbeats.length >= 7, '7 heartbeats', 5000);
    const peer = server.peers[0]!;
    expect(connected).to.deep.equal([`${peer.session.id} 200`]);
    expect(peer.fingerprint).to.equal(client.identity.fingerprint);
    // The first heartbeat goes out on connect; the rest follow the interval.
    const gaps = peer.heartbeats.slice(1).map((h, i) => h.at - peer.heartbeats[i]!.at).slice(1);
    const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
    expect(mean, `gaps ${gaps.map(Math.round).join(', ')}`).to.be.within(180, 260);
    const last = peer.heartbeats.at(-1)!.message;
    expect(last).to.include(health);
    expect(Math.abs(last.at - localClock())).to.be.below(1000);
    expect(Math.abs(last.clockOffsetMs)).to.be.below(5);
    expect(client.counters).to.include({ attempts: 1, connects: 1, disconnects: 0 });
    expect(client.connected).to.equal(true);
  });

  it('pins the server key on first contact (0600), refuses a server with another key on every attempt and never re-pins', async () => {
    const dataDir = tempDir();
    const first = await startServer();
    const pins = PinStore.open(dataDir);
    const client = makeClient({ url: first.url, pins });
    client.start();
    await waitFor(() => client.connected, 'first contact');
    const file = path.join(dataDir, PINS_FILE);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).to.deep.equal({ [pinOrigin(first.url)]: { server: first.identity.publicKeyBase64 } });
    expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
    await client.close();

    // Another server (another key) takes over the same address.
    const port = first.port;
    await first.close();
    servers = servers.filter((s) => s !== first);
    const impostor = await startServer({ port });
    const { log, entries } = recordingLogger();
    const refusals: string[] = [];
    const again = makeClient({ url: impostor.url, pins: PinStore.open(dataDir), log, backoff: FAST_BACKOFF, onRefused: (code) => refusals.push(code) });
    again.start();
    await waitFor(() => refusals.length >= 3, 'three refused attempts');
    expect(new Set(refusals)).to.deep.equal(new Set(['BOLT_ERR_WIRE_SERVER_KEY_CHANGED']));
    expect(again.connected).to.equal(false);
    expect(impostor.peers, 'the impostor never completes a handshake').to.have.length(0);
    const errors = entries.filter((e) => e.level === 'error' && e.fields.code === 'BOLT_ERR_WIRE_SERVER_KEY_CHANGED');
    expect(errors.length, 'logged at error level on every attempt').to.be.at.least(3);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).to.deep.equal({ [pinOrigin(first.url)]: { server: first.identity.publicKeyBase64 } });
  });

  it('with an up-front server key or fingerprint, refuses any other key from the first contact and pins nothing', async () => {
    const server = await startServer();
    const other = generateIdentity();
    for (const serverKey of [other.publicKeyBase64, other.fingerprint]) {
      const dataDir = tempDir();
      const refusals: string[] = [];
      const client = makeClient({ url: server.url, pins: PinStore.open(dataDir), serverKey, backoff: FAST_BACKOFF, onRefused: (code) => refusals.push(code) });
      client.start();
      await waitFor(() => refusals.length >= 2, 'two refused attempts');
      expect(new Set(refusals)).to.deep.equal(new Set(['BOLT_ERR_WIRE_SERVER_KEY_CHANGED']));
      expect(fs.existsSync(path.join(dataDir, PINS_FILE))).to.equal(false);
      await client.close();
    }
    expect(server.peers).to.have.length(0);
    // The right fingerprint is accepted and the key pinned.
    const dataDir = tempDir();
    const client = makeClient({ url: server.url, pins: PinStore.open(dataDir), serverKey: fingerprint(server.identity.publicKeyBase64) });
    client.start();
    await waitFor(() => client.connected, 'connection with the expected key');
    expect(PinStore.open(dataDir).get(pinOrigin(server.url), 'server')).to.equal(server.identity.publicKeyBase64);
  });

  it('estimates injected clock offsets of -1000, -250, 0, +400 and +1000 ms within 1 ms, and reports them in heartbeats', async () => {
    const server = await startServer({ heartbeatIntervalMs: 200 });
    const skews = [-1000, -250, 0, 400, 1000];
    const clients = skews.map((skew) => makeClient({ url: server.url, host: `skew${skew}`, clock: () => localClock() + skew }));
    for (const c of clients) c.start();
    await waitFor(() => clients.every((c) => (c.estimate()?.samples ?? 0) >= 8), 'eight clock samples per client');
    skews.forEach((skew, i) => {
      const estimate = clients[i]!.estimate()!;
      // Server clock − client clock = −skew.
      expect(Math.abs(estimate.offsetMs + skew), `skew ${skew}: estimate ${estimate.offsetMs} ± ${estimate.errorMs}`).to.be.below(1);
      expect(Math.abs(clients[i]!.serverNow() - localClock())).to.be.below(1);
    });
    const probe = performance.now();
    await waitFor(() => server.peers.every((p) => (p.heartbeats.at(-1)?.at ?? 0) > probe), 'a heartbeat after the estimates');
    for (const peer of server.peers) {
      const skew = Number(peer.host.slice(4));
      expect(Math.abs(peer.heartbeats.at(-1)!.message.clockOffsetMs + skew)).to.be.below(1);
    }
  });

  it('acts only on verified commands: unsigned, tampered, expired and replayed ones are refused with their code, acked and logged', async () => {
    const server = await startServer();
    const guardDir = tempDir();
    const { log, entries } = recordingLogger();
    const dispatched: string[] = [];
    const cancelled: TaskCancelMessage[] = [];
    const client = makeClient({ url: server.url, replayGuardDir: guardDir, log, onDispatch: (c) => dispatched.push(c.id), onCancel: (c) => cancelled.push(c) });
    client.start();
    await waitFor(() => server.live.length === 1, 'connection');
    const peer = server.live[0]!;
    const ackOf = async (id: string) => {
      await waitFor(() => peer.acks.some((a) => a.ref === id), `ack of ${id}`);
      return peer.acks.find((a) => a.ref === id)!;
    };

    const good = server.dispatch({ id: 'good-1' });
    expect(await ackOf('good-1')).to.include({ accepted: true, runId: 'run-1', taskId: 'task-1' });

    const { sig: _sig, ...unsigned } = { ...good, id: 'unsigned-1' };
    server.sendText(JSON.stringify(unsigned));
    const tampered: TaskDispatchMessage = { ...server.dispatch({ id: 'tamper-1' }, []), with: { run: 'rm -rf /' } };
    server.sendText(JSON.stringify(tampered));
    server.dispatch({ id: 'expired-1', expiresAt: localClock() - 1000 });
    server.sendText(JSON.stringify(good));
    const refusedAs = { 'unsigned-1': 'BOLT_ERR_WIRE_UNSIGNED', 'tamper-1': 'BOLT_ERR_WIRE_BAD_SIGNATURE', 'expired-1': 'BOLT_ERR_WIRE_EXPIRED' };
    for (const [id, code] of Object.entries(refusedAs)) expect(await ackOf(id), id).to.include({ accepted: false, code });
    await waitFor(() => peer.acks.filter((a) => a.ref === 'good-1').length === 2, 'ack of the replay');
    expect(peer.acks.filter((a) => a.ref === 'good-1')[1]).to.include({ accepted: false, code: 'BOLT_ERR_WIRE_REPLAYED' });
    expect(dispatched).to.deep.equal(['good-1']);
    const warned = entries.filter((e) => e.level === 'warn' && typeof e.fields.code === 'string').map((e) => `${String(e.fields.id)} ${String(e.fields.code)}`);
    expect(warned).to.include.members(['unsigned-1 BOLT_ERR_WIRE_UNSIGNED', 'tamper-1 BOLT_ERR_WIRE_BAD_SIGNATURE', 'expired-1 BOLT_ERR_WIRE_EXPIRED', 'good-1 BOLT_ERR_WIRE_REPLAYED']);
    expect(client.counters.commandsRefused).to.deep.equal({ BOLT_ERR_WIRE_UNSIGNED: 1, BOLT_ERR_WIRE_BAD_SIGNATURE: 1, BOLT_ERR_WIRE_EXPIRED: 1, BOLT_ERR_WIRE_REPLAYED: 1 });

    // A signed cancel of a whole run is verified and acked too.
    const cancel = server.cancel({ id: 'cancel-1' });
    expect(await ackOf('cancel-1')).to.include({ accepted: true, runId: 'run-1' });
    expect(cancelled.map((c) => c.id)).to.deep.equal([cancel.id]);

    // The client restarts with the same data dir: the command it ran is still refused.
    await client.close();
    expect(fs.readFileSync(path.join(guardDir, REPLAY_GUARD_FILE), 'utf8')).to.contain('good-1');
    const restarted = makeClient({ url: server.url, identity: client.identity, replayGuardDir: guardDir, onDispatch: (c) => dispatched.push(c.id) });
    restarted.start();
    await waitFor(() => server.live.length === 1, 'reconnection after restart');
    const peer2 = server.live[0]!;
    server.sendText(JSON.stringify(good), [peer2]);
    server.dispatch({ id: 'good-2' }, [peer2]);
    await waitFor(() => peer2.acks.length === 2, 'two acks after the restart');
    expect(peer2.acks.map((a) => `${a.ref} ${a.accepted} ${a.code ?? ''}`)).to.deep.equal(['good-1 false BOLT_ERR_WIRE_REPLAYED', 'good-2 true ']);
    expect(dispatched).to.deep.equal(['good-1', 'good-2']);
  });

  it('reconnects after the server goes away, with full-jitter delays spread over the window, and is back once it returns', async () => {
    const server = await startServer();
    const delays = new Map<number, number[]>();
    const clients = Array.from({ length: 20 }, (_, i) =>
      makeClient({ url: server.url, onReconnectScheduled: (ms) => delays.set(i, [...(delays.get(i) ?? []), ms]) }),
    );
    for (const c of clients) c.start();
    await waitFor(() => clients.every((c) => c.connected), '20 connections');
    const port = server.port;
    await server.close();
    servers = [];
    await waitFor(() => clients.every((c) => (delays.get(clients.indexOf(c))?.length ?? 0) >= 2), 'two failed attempts each', 8000);
    const firsts = clients.map((_, i) => delays.get(i)![0]!);
    const seconds = clients.map((_, i) => delays.get(i)![1]!);
    // Attempt 0 draws from [0, 500], attempt 1 from [0, 1000]: spread out, not in lock-step.
    expect(Math.max(...firsts)).to.be.at.most(500);
    expect(Math.max(...seconds)).to.be.at.most(1000);
    expect(Math.max(...firsts) - Math.min(...firsts), `first delays ${firsts.map(Math.round).join(', ')}`).to.be.above(150);
    expect(new Set(firsts.map(Math.round)).size).to.be.above(10);
    const back = await startServer({ port });
    await waitFor(() => clients.every((c) => c.connected), 'all 20 back', 10_000);
    expect(new Set(back.live.map((p) => p.fingerprint)).size).to.equal(20);
    for (const c of clients) expect(c.counters.connects).to.equal(2);
  });

  it('waits at least Retry-After after an HTTP 503, then connects', async () => {
    const server = await startServer();
    server.busyUpgrades = 2;
    server.retryAfterSeconds = 1;
    const causes: string[] = [];
    const client = makeClient({ url: server.url, onReconnectScheduled: (_ms, cause) => causes.push(cause) });
    client.start();
    await waitFor(() => client.connected, 'connection after two 503s', 8000);
    expect(causes).to.deep.equal(['HTTP 503', 'HTTP 503']);
    expect(client.counters).to.include({ busy: 2, attempts: 3, connects: 1 });
    const [a, b, c] = server.upgrades;
    expect(b! - a!).to.be.at.least(1000);
    expect(c! - b!).to.be.at.least(1000);
  });

  it('keeps retrying while its key is pending, and connects once it is accepted', async () => {
    let accept = false;
    const server = await startServer({ authorize: () => accept });
    const refusals: string[] = [];
    const client = makeClient({ url: server.url, backoff: FAST_BACKOFF, onRefused: (code) => refusals.push(code) });
    client.start();
    await waitFor(() => refusals.length >= 3, 'three refusals');
    expect(new Set(refusals)).to.deep.equal(new Set(['BOLT_ERR_WIRE_PEER_NOT_ACCEPTED']));
    accept = true;
    await waitFor(() => client.connected, 'connection once accepted');
  });

  it('failure hooks: paused heartbeats stop arriving, garbage and a dropped socket end the session, and it comes back', async () => {
    const server = await startServer({ heartbeatIntervalMs: 100 });
    const disconnects: string[] = [];
    const client = makeClient({ url: server.url, backoff: FAST_BACKOFF, onDisconnected: (d) => disconnects.push(`${d.code}`) });
    client.start();
    await waitFor(() => (server.live[0]?.heartbeats.length ?? 0) >= 2, 'heartbeats');
    client.pauseHeartbeats(true);
    const peer = server.live[0]!;
    await new Promise((resolve) => setTimeout(resolve, 50));
    const count = peer.heartbeats.length;
    const pausedAt = performance.now();
    await waitFor(() => performance.now() - pausedAt > 350, 'three intervals');
    expect(peer.heartbeats.length).to.equal(count);
    client.pauseHeartbeats(false);
    await waitFor(() => peer.heartbeats.length > count, 'heartbeats resumed');

    expect(client.sendRaw('{"not":"sealed"}')).to.equal(true);
    await waitFor(() => server.refused.includes('BOLT_ERR_WIRE_MALFORMED') && client.counters.connects === 2, 'reconnect after garbage');
    client.dropConnection();
    await waitFor(() => client.counters.connects === 3, 'reconnect after a dropped socket');
    expect(disconnects).to.deep.equal(['1008', '1006']);
    expect(server.live).to.have.length(1);
  });

  it('adds the simulated one-way latency to every frame', async () => {
    const server = await startServer();
    const client = makeClient({ url: server.url, latencyMs: 40 });
    const started = performance.now();
    client.start();
    await waitFor(() => (client.estimate()?.samples ?? 0) >= 1, 'a clock sample');
    // hello, auth (2 sends) and challenge, welcome (2 receipts): at least 4 × 40 ms before the session.
    expect(performance.now() - started).to.be.at.least(160);
    const { rttMs, offsetMs } = client.estimate()!;
    // Two 40 ms delays; a timer may fire up to a millisecond early against performance.now().
    expect(rttMs).to.be.within(78, 200);
    expect(Math.abs(offsetMs)).to.be.below(10);
    expect(client.send({ v: 1, type: 'heartbeat', id: 'h-x', at: 1, load1: 0, cpuPercent: 0, memAvailableBytes: 0, diskFreeBytes: 0, eventLoopLagMs: 0, clockOffsetMs: 0 })).to.equal(true);
  });

  it('connects over wss:// with the CA it is given, and not without it', async () => {
    const dir = tempDir();
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const server = await startServer({ tls: { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } });
    expect(server.url.startsWith('wss://')).to.equal(true);
    const causes: string[] = [];
    const untrusting = makeClient({ url: server.url, backoff: FAST_BACKOFF, onReconnectScheduled: (_ms, cause) => causes.push(cause) });
    untrusting.start();
    await waitFor(() => causes.length >= 1, 'a failed TLS attempt');
    expect(causes[0]).to.match(/SELF_SIGNED|CERT|certificate/i);
    await untrusting.close();
    const client = makeClient({ url: server.url, ca: fs.readFileSync(cert) });
    client.start();
    await waitFor(() => client.connected, 'wss connection');
    expect(client.send({ v: 1, type: 'task.ack', id: 'a-1', ref: 'x', runId: 'r', taskId: 't', accepted: true })).to.equal(true);
    await waitFor(() => server.live[0]?.acks.length === 1, 'the ack');
  });

  it('pins the sink key the welcome names, then reaches that sink (and refuses another) as a client → sink connection', async () => {
    const sink = await startServer({ role: 'sink' });
    const impostorSink = await startServer({ role: 'sink' });
    const server = await startServer({ sink: { url: sink.url, publicKey: sink.identity.publicKeyBase64 } });
    const dataDir = tempDir();
    const pins = PinStore.open(dataDir);
    const identity = generateIdentity();
    const toServer = makeClient({ url: server.url, identity, pins });
    toServer.start();
    await waitFor(() => toServer.connected, 'server connection');
    expect(pins.get(pinOrigin(server.url), 'sink')).to.equal(sink.identity.publicKeyBase64);
    const sinkUrl = toServer.session!.welcome.sink!.url;

    const toSink = makeClient({ url: sinkUrl, identity, expectRole: 'sink', pins, pinOrigin: pinOrigin(server.url) });
    expect(toSink.outbound).to.equal('client->sink');
    toSink.start();
    await waitFor(() => toSink.connected, 'sink connection');
    const event = { v: 1, type: 'task.event', id: 'ev-1', runId: 'run-1', taskId: 'task-1', host: 'h', kind: 'started', at: localClock() } as const;
    expect(toSink.send(event)).to.equal(true);
    await waitFor(() => sink.live[0]?.ingested.length === 1, 'the event at the sink');
    expect(sink.live[0]!.ingested[0]).to.deep.equal(event);
    expect(toSink.estimate(), 'no clock sync with a sink').to.equal(null);

    const refusals: string[] = [];
    const wrongSink = makeClient({ url: impostorSink.url, identity, expectRole: 'sink', pins, pinOrigin: pinOrigin(server.url), backoff: FAST_BACKOFF, onRefused: (code) => refusals.push(code) });
    wrongSink.start();
    await waitFor(() => refusals.length >= 2, 'two refusals');
    expect(new Set(refusals)).to.deep.equal(new Set(['BOLT_ERR_WIRE_SERVER_KEY_CHANGED']));
    expect(impostorSink.peers).to.have.length(0);
  });

  it('send() returns false when not connected', async () => {
    const server = await startServer();
    const client = makeClient({ url: server.url });
    expect(client.send({ v: 1, type: 'task.ack', id: 'a-1', ref: 'x', runId: 'r', taskId: 't', accepted: true })).to.equal(false);
    expect(() => client.send({ v: 1, type: 'task.status', id: 's', runId: 'r', taskId: 't', state: 'failed', hosts: { total: 0, started: 0, finished: 0, failed: 0, timedout: 0, cancelled: 0 } })).to.throw(TypeError);
  });
});
