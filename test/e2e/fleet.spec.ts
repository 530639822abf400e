/**
 * Server, sink and clients as separate `bolt-core` processes on loopback (and, as root, in their
 * own network namespaces): registration with labels and facts, missing/lost after SIGKILL, and
 * a SIGSTOPped client coming back under the same identity.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createNetnsNetwork, netnsAvailable, type NetnsNetwork } from '../helpers/netns.ts';
import { BIN, eventually, freePort, spawnBolt, type BoltProcess } from '../helpers/processes.ts';

interface HostRow {
  id: string;
  name: string;
  address: string;
  labels: Record<string, string>;
  facts: { hostname?: string; cpu?: { cores?: number }; memory?: { totalBytes?: number }; os?: { kernel?: string } };
  state: string;
  connected: boolean;
}

/** `bolt-core hosts --json` against the server's data dir. */
function hosts(dataDir: string, ...args: string[]): HostRow[] {
  const r = spawnSync(process.execPath, [BIN, 'hosts', '--json', '--data', dataDir, ...args], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`bolt-core hosts exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as HostRow[];
}

/** A bolt.yaml with short heartbeat and health timers, so the test sees missing and lost in seconds. */
const FAST_HEALTH = {
  plugins: {
    'transport-ws': { heartbeatIntervalMs: 300 },
    'health-monitor': { missingAfterMs: 1500, lostAfterMs: 4000, tickMs: 100 },
  },
};

describe('fleet end to end: bolt-core start + three --role client processes', function () {
  this.timeout(90_000);
  let dir: string;
  let port: number;
  let server: BoltProcess;
  const clients: BoltProcess[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-e2e-'));
    await writeFile(path.join(dir, 'bolt.yaml'), JSON.stringify(FAST_HEALTH));
    port = await freePort();
    server = spawnBolt(['start', '--data', path.join(dir, 'server'), '--config', path.join(dir, 'bolt.yaml'), '--port', String(port), '--sink-port', String(await freePort()), '--auto-accept', '--listen', '127.0.0.1'], { cwd: dir });
    await server.waitForOutput(/started/);
    for (let i = 0; i < 3; i++) {
      clients.push(spawnBolt([
        'start', '--role', 'client', '--server', `ws://127.0.0.1:${port}`, '--data', path.join(dir, `client${i}`),
        '--config', path.join(dir, 'bolt.yaml'), '--name', `c${i}`, '--label', `zone=${i < 2 ? 'a' : 'b'}`, '--label', `index=${i}`,
      ], { cwd: dir }));
    }
  });

  after(async () => {
    await Promise.all([...clients, server].map((p) => p?.kill()));
    await rm(dir, { recursive: true, force: true });
  });

  it('lists every client with its labels and facts, healthy', async () => {
    const list = await eventually(() => {
      const h = hosts(path.join(dir, 'server'));
      return h.filter((x) => x.state === 'healthy').length === 3 ? h : undefined;
    }, 30_000, 'three healthy hosts');
    expect(list.map((h) => h.name).sort()).to.deep.equal(['c0', 'c1', 'c2']);
    for (const h of list) {
      expect(h.address).to.match(/127\.0\.0\.1/);
      expect(h.labels.index).to.equal(h.name.slice(1));
      expect(h.facts.cpu?.cores).to.equal(os.availableParallelism());
      expect(h.facts.memory?.totalBytes).to.equal(os.totalmem());
      expect(h.facts.os?.kernel).to.be.a('string').and.not.empty;
    }
    expect(hosts(path.join(dir, 'server'), '--label', 'zone=a').map((h) => h.name).sort()).to.deep.equal(['c0', 'c1']);
  });

  it('turns a SIGKILLed client missing, then lost', async () => {
    const victim = clients[0]!;
    victim.proc.kill('SIGKILL');
    await victim.exited();
    const killedAt = Date.now();
    await eventually(() => (hosts(path.join(dir, 'server')).find((h) => h.name === 'c0')?.state === 'missing' ? true : undefined), 10_000, 'c0 missing');
    const missingAfter = Date.now() - killedAt;
    await eventually(() => (hosts(path.join(dir, 'server')).find((h) => h.name === 'c0')?.state === 'lost' ? true : undefined), 15_000, 'c0 lost');
    const lostAfter = Date.now() - killedAt;
    // missingAfterMs 1500 and lostAfterMs 4000 count from the last heartbeat, at most 300 ms before the kill.
    expect(missingAfter).to.be.below(1500 + 2000);
    expect(lostAfter).to.be.within(4000 - 400, 4000 + 3000);
  });

  it('brings a SIGSTOPped client back healthy under the same identity', async () => {
    const paused = clients[1]!;
    const before = hosts(path.join(dir, 'server')).find((h) => h.name === 'c1')!;
    paused.proc.kill('SIGSTOP');
    await eventually(() => (hosts(path.join(dir, 'server')).find((h) => h.name === 'c1')?.state === 'missing' ? true : undefined), 10_000, 'c1 missing');
    paused.proc.kill('SIGCONT');
    await eventually(() => (hosts(path.join(dir, 'server')).find((h) => h.name === 'c1')?.state === 'healthy' ? true : undefined), 20_000, 'c1 healthy again');
    const all = hosts(path.join(dir, 'server'));
    expect(all.filter((h) => h.name === 'c1')).to.have.length(1);
    expect(all.find((h) => h.name === 'c1')!.id).to.equal(before.id);
    expect(all).to.have.length(3);
  });
});

describe('fleet over TLS: --tls-cert/--tls-key on the server, wss:// and --tls-ca on the client', function () {
  this.timeout(60_000);
  let dir: string;
  const procs: BoltProcess[] = [];

  after(async () => {
    await Promise.all(procs.map((p) => p.kill()));
    await rm(dir, { recursive: true, force: true });
  });

  it('registers a client over wss:// and refuses one that does not trust the certificate', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-tls-'));
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    await writeFile(path.join(dir, 'bolt.yaml'), JSON.stringify(FAST_HEALTH));
    const port = await freePort();
    const server = spawnBolt(['start', '--data', path.join(dir, 'server'), '--config', path.join(dir, 'bolt.yaml'), '--port', String(port), '--sink-port', String(await freePort()),
      '--auto-accept', '--listen', '127.0.0.1', '--tls-cert', cert, '--tls-key', key], { cwd: dir });
    procs.push(server);
    await server.waitForOutput(/server listening on https:/);
    const trusting = spawnBolt(['start', '--role', 'client', '--server', `wss://127.0.0.1:${port}`, '--tls-ca', cert, '--data', path.join(dir, 'c-ok'), '--config', path.join(dir, 'bolt.yaml'), '--name', 'tls-ok'], { cwd: dir });
    const untrusting = spawnBolt(['start', '--role', 'client', '--server', `wss://127.0.0.1:${port}`, '--data', path.join(dir, 'c-no'), '--config', path.join(dir, 'bolt.yaml'), '--name', 'tls-no'], { cwd: dir });
    procs.push(trusting, untrusting);
    await eventually(() => (hosts(path.join(dir, 'server')).some((h) => h.name === 'tls-ok' && h.state === 'healthy') ? true : undefined), 30_000, 'the wss client healthy');
    await untrusting.waitForOutput(/"level":40[^\n]*SELF_SIGNED_CERT/, 20_000);
    expect(hosts(path.join(dir, 'server')).map((h) => h.name)).to.deep.equal(['tls-ok']);
  });
});

describe('fleet across network namespaces (root only)', function () {
  this.timeout(90_000);
  const available = netnsAvailable();
  if (!available) {
    // Outside root (a developer's laptop) the namespaces cannot be made; CI runs as root and must run it.
    it('needs root and ip netns', () => {
      expect(process.env.CI, 'CI runs as root with iproute2: this test must run there').to.not.equal('true');
    });
    return;
  }
  let dir: string;
  let net: NetnsNetwork;
  const procs: BoltProcess[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-netns-'));
    await writeFile(path.join(dir, 'bolt.yaml'), JSON.stringify(FAST_HEALTH));
    net = createNetnsNetwork(3);
  });

  after(async () => {
    await Promise.all(procs.map((p) => p.kill()));
    net?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('registers one client per namespace by its own address', async () => {
    const port = await freePort();
    const server = spawnBolt(['start', '--data', path.join(dir, 'server'), '--config', path.join(dir, 'bolt.yaml'), '--port', String(port), '--sink-port', String(await freePort()), '--auto-accept', '--listen', net.gateway], { cwd: dir });
    procs.push(server);
    await server.waitForOutput(/started/);
    net.hosts.forEach((h, i) => {
      procs.push(spawnBolt(['start', '--role', 'client', '--server', `ws://${net.gateway}:${port}`, '--data', path.join(dir, `ns${i}`), '--config', path.join(dir, 'bolt.yaml'), '--name', `ns${i}`], { cwd: dir, netns: h.name }));
    });
    const list = await eventually(() => {
      const h = hosts(path.join(dir, 'server'));
      return h.filter((x) => x.state === 'healthy').length === 3 ? h : undefined;
    }, 40_000, 'three healthy namespaced hosts');
    const byName = new Map(list.map((h) => [h.name, h]));
    net.hosts.forEach((h, i) => {
      expect(byName.get(`ns${i}`)?.address).to.include(h.address);
    });
  });
});
