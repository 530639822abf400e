import { expect } from 'chai';
import fs from 'node:fs';
import { Fleet } from '../../../../bench/fleet/fleet.ts';
import { localClock } from '../../protocol/index.ts';
import { MiniServer, waitFor } from './mini-server.ts';

describe('bench/fleet: simulated hosts against a loopback responder', function () {
  this.timeout(20_000);
  let server: MiniServer;
  let fleet: Fleet | null = null;

  beforeEach(async () => {
    server = await MiniServer.start({ heartbeatIntervalMs: 500 });
  });
  afterEach(async () => {
    await fleet?.close();
    fleet = null;
    await server.close();
  });

  it('connects 200 hosts, each with its own identity, and every one verifies one broadcast dispatch', async () => {
    const skews = [-1000, -250, 0, 400, 1000];
    fleet = new Fleet({ url: server.url, count: 200, namePrefix: 'fl', labels: (i) => ({ rack: `r${i % 4}` }), clockSkewMs: (i) => skews[i % skews.length]! });
    const started = performance.now();
    await fleet.start();
    await fleet.waitConnected(200, 15_000);
    const connectMs = performance.now() - started;
    expect(new Set(server.live.map((p) => p.fingerprint)).size).to.equal(200);
    expect(new Set(server.live.map((p) => p.host))).to.have.property('size', 200);
    expect(server.live.find((p) => p.host === 'fl-7')?.session.peer.hello?.labels).to.deep.equal({ rack: 'r3' });

    const sentAt = performance.timeOrigin + performance.now();
    const command = server.dispatch({ id: 'broadcast-1', expiresAt: localClock() + 30_000 });
    await fleet.waitArrivals(command.id, 200, 10_000);
    const arrivals = [...fleet.arrivals(command.id).values()];
    expect(arrivals).to.have.length(200);
    expect(Math.min(...arrivals)).to.be.at.least(sentAt);
    await waitFor(() => server.live.every((p) => p.acks.some((a) => a.ref === command.id && a.accepted)), '200 acks');
    const stats = fleet.stats();
    expect(stats).to.include({ clients: 200, started: 200, connected: 200, connects: 200, commandsAccepted: 200 });
    console.log(`      200 hosts connected in ${Math.round(connectMs)} ms; broadcast reached all in ${(Math.max(...arrivals) - sentAt).toFixed(1)} ms`);

    // Every estimate holds the truth (offset = −skew) within its own error bound.
    await waitFor(() => fleet!.estimates().every((e) => (e.estimate?.samples ?? 0) >= 4), 'four clock samples per host', 10_000);
    for (const { skewMs, estimate, name } of fleet.estimates()) {
      expect(Math.abs(estimate!.offsetMs + skewMs), `${name}: ${estimate!.offsetMs} ± ${estimate!.errorMs}`).to.be.at.most(estimate!.errorMs + 0.01);
    }
  });

  it('injects failures: stopped heartbeats, dropped connections and garbage, and shows the reconnects', async () => {
    fleet = new Fleet({ url: server.url, count: 20, backoff: { baseMs: 50, capMs: 200 } });
    await fleet.start();
    await fleet.waitConnected(20, 10_000);
    const peerOf = (i: number) => server.live.find((p) => p.host === `sim-${i}`)!;
    await waitFor(() => server.live.every((p) => p.heartbeats.length >= 1), 'a heartbeat from each host');

    expect(fleet.inject('stop-heartbeat', [0, 1])).to.equal(2);
    const quiet = [peerOf(0), peerOf(1)];
    const talking = peerOf(2);
    const counts = quiet.map((p) => p.heartbeats.length);
    const mark = talking.heartbeats.length;
    await waitFor(() => talking.heartbeats.length >= mark + 2, 'two more heartbeats from a healthy host', 5000);
    expect(quiet.map((p) => p.heartbeats.length)).to.deep.equal(counts);

    const injectedAt = performance.now();
    expect(fleet.inject('drop', [3, 4, 5])).to.equal(3);
    expect(fleet.inject('garbage', [6])).to.equal(1);
    await waitFor(() => fleet!.stats().connects === 24 && fleet!.connected === 20, 'four reconnects', 5000, () => JSON.stringify(fleet!.stats()));
    expect(server.refused).to.include('BOLT_ERR_WIRE_MALFORMED');
    const stats = fleet.stats();
    expect(stats.disconnects).to.equal(4);
    expect(stats.reconnectDelays.counts.reduce((a, b) => a + b, 0)).to.equal(4);
    expect(fleet.attemptHistogram(injectedAt, 60_000)).to.deep.equal([4]);
    expect(new Set(server.live.map((p) => p.host)).size).to.equal(20);
  });

  it('removes the data root it created, with the replay guards in it', async () => {
    fleet = new Fleet({ url: server.url, count: 3 });
    await fleet.start();
    await fleet.waitConnected(3, 10_000);
    const command = server.dispatch();
    await fleet.waitArrivals(command.id, 3);
    const root = fleet.dataRoot;
    expect(fs.readdirSync(root).sort()).to.deep.equal(['pins.json', 'sim-0', 'sim-1', 'sim-2']);
    await fleet.close();
    fleet = null;
    expect(fs.existsSync(root)).to.equal(false);
  });
});
