/**
 * The wire's security properties, end to end: real `bolt-core` processes on loopback (servers and
 * `--role client` agents), the client tests' responder for the commands no real server sends
 * (unsigned, tampered, expired, replayed), and test peers speaking the real handshake for the
 * attacks on a running server (oversized frames, huge upgrade requests, a peer that stops reading,
 * 100,000 malformed messages). What the processes did is read from their pino log lines, their
 * admin endpoints (`transport.*`, `health.hosts`, `client.status`) and the bus-probe test plugin
 * (test/helpers/plugins), which records `task.ack` and `sink.task.event` on a server and
 * `client.task.dispatch` on a client.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { execFile } from 'node:child_process';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { MessageType, TaskDispatchMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import { pinOrigin, PINS_FILE } from '../../plugins/transport-ws/client/pins.ts';
import { createDecoder, fingerprint, generateIdentity, IDENTITY_DIR, loadOrCreateIdentity, localClock, PRIVATE_KEY_FILE, type Identity } from '../../plugins/transport-ws/protocol/index.ts';
import { MiniServer } from '../../plugins/transport-ws/test/client/mini-server.ts';
import { sampleMessages } from '../../plugins/transport-ws/test/protocol/helpers.ts';
import { rawRequest } from '../../plugins/transport-ws/test/server/harness.ts';
import { refusal, TestPeer } from '../../plugins/transport-ws/test/server/peer.ts';
import { PLUGINS, REPO } from '../helpers/core.ts';
import { BIN, eventually, freePort, spawnBolt, type BoltProcess } from '../helpers/processes.ts';

const execFileP = promisify(execFile);
const PROBE_PLUGINS = path.join(REPO, 'test', 'helpers', 'plugins');
const MiB = 1024 * 1024;

/** A running `bolt-core` process with its data dir, admin endpoint and ports. */
interface Host {
  proc: BoltProcess;
  dir: string;
  admin: { url: string; token: string };
  port: number;
  sinkPort: number;
}

/** One pino line of a process's output. */
interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

interface DispatchResult {
  commandId: string;
  sent: string[];
  skipped: { id: string; reason: string }[];
}

interface EndpointStats {
  accepted: number;
  garbage: number;
  garbageDisconnects: number;
  badFrames: number;
  tooBig: number;
  droppedSlow: number;
  rateLimited: number;
  handlerErrors: number;
  connections: number;
  refused: Record<string, number>;
}

interface KeyEntry {
  fingerprint: string;
  role: string;
  state: string;
  host: string;
}

interface SessionRecord {
  id: string;
  name: string;
  role: string;
  sessionId: string;
}

function logLines(proc: BoltProcess): LogLine[] {
  return proc.output().split('\n').flatMap((line) => {
    if (!line.startsWith('{')) return [];
    try {
      return [JSON.parse(line) as LogLine];
    } catch {
      return [];
    }
  });
}

/** Resident set size of a process (all its threads), in bytes. */
async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) * 1024;
}

/** CPU time a process has used so far (user + system, all threads), in ms. */
async function cpuMsOf(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Calls a bus service of a running process through its admin endpoint. */
async function request<T>(node: Host, service: string, body: unknown = {}): Promise<T> {
  const res = await fetch(`${node.admin.url}/api/request/${service}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${node.admin.token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const answer = (await res.json()) as { result?: T; error?: { code: string; message: string } };
  if (!res.ok) throw new Error(`${service} answered ${res.status}: ${answer.error?.code} ${answer.error?.message}`);
  return answer.result as T;
}

/** `bolt-core keys ARGS... --json --data DIR`, as an operator runs it. */
async function keysCli<T>(node: Host, ...args: string[]): Promise<T> {
  const { stdout } = await execFileP(process.execPath, [BIN, 'keys', ...args, '--json', '--data', node.dir], { timeout: 20_000, cwd: REPO });
  return JSON.parse(stdout) as T;
}

function dispatch(node: Host, targets: string[], extra: Record<string, unknown> = {}): Promise<DispatchResult> {
  return request<DispatchResult>(node, 'transport.dispatch', { runId: 'sec-run', taskId: 'sec-task', action: 'sleep', with: { duration: '10ms' }, startAt: null, timeoutMs: 1000, targets, ...extra });
}

async function probeEvents<T>(node: Host, topic: string): Promise<{ total: number; events: T[] }> {
  return request(node, 'probe.events', { topic });
}

/** Where a process keeps the transport's files (identity, pins.json, trust.json, replay guard). */
const transportDir = (node: Host) => path.join(node.dir, 'plugins', 'transport-ws');

/** The host key a process created on its first start (never creates one). */
async function hostKey(node: Host): Promise<Identity> {
  await access(path.join(transportDir(node), IDENTITY_DIR, PRIVATE_KEY_FILE));
  return loadOrCreateIdentity(transportDir(node));
}

const sessions = (node: Host) => request<SessionRecord[]>(node, 'transport.sessions');
const stats = (node: Host) => request<EndpointStats>(node, 'transport.stats');

describe('security end to end: real bolt-core processes on loopback', function () {
  this.timeout(60_000);
  let root: string;
  const procs: BoltProcess[] = [];
  const peers: TestPeer[] = [];
  const minis: MiniServer[] = [];

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'bolt-security-'));
  });

  after(async () => {
    for (const peer of peers) peer.ws.terminate();
    await Promise.all([...procs.map((p) => p.kill()), ...minis.map((m) => m.close())]);
    await rm(root, { recursive: true, force: true });
  });

  /** Reads the admin endpoint this very process wrote to `<dir>/core.json` (a killed predecessor's may still be there). */
  async function adminOf(proc: BoltProcess, dir: string): Promise<Host['admin']> {
    return eventually(async () => {
      const info = JSON.parse(await readFile(path.join(dir, 'core.json'), 'utf8')) as { pid: number; admin: Host['admin'] };
      return info.pid === proc.proc.pid ? info.admin : undefined;
    }, 20_000, `${dir}/core.json of pid ${proc.proc.pid}`);
  }

  async function configFile(name: string, transport: Record<string, unknown>): Promise<string> {
    const file = path.join(root, `${name}.yaml`);
    await writeFile(file, JSON.stringify({ plugins: { 'transport-ws': transport } }));
    return file;
  }

  /** `bolt-core start` (server and sink) with the bus probe, listening on loopback. */
  async function startServer(name: string, opts: { autoAccept: boolean; port?: number; sinkPort?: number; transport?: Record<string, unknown>; logLevel?: string }): Promise<Host> {
    const dir = path.join(root, name);
    const port = opts.port ?? (await freePort());
    let sinkPort = opts.sinkPort ?? (await freePort());
    while (sinkPort === port) sinkPort = await freePort();
    const proc = spawnBolt([
      'start', '--data', dir, '--config', await configFile(name, opts.transport ?? {}), '--plugins', PLUGINS, '--plugins', PROBE_PLUGINS,
      '--port', String(port), '--sink-port', String(sinkPort), '--listen', '127.0.0.1', ...(opts.autoAccept ? ['--auto-accept'] : []),
    ], { cwd: root, env: { BOLT_LOG_LEVEL: opts.logLevel ?? 'debug' } });
    procs.push(proc);
    const [started] = await proc.waitForOutput(/^.*"msg":"bolt-core server\+sink started.*$/m);
    expect(started, 'transport-ws and bus-probe running').to.match(/"running":\[[^\]]*"bus-probe"[^\]]*"transport-ws"/);
    return { proc, dir, admin: await adminOf(proc, dir), port, sinkPort };
  }

  /** `bolt-core start --role client` with the bus probe; resolves with its key's fingerprint once it is connecting. */
  async function startClient(name: string, serverPort: number, dir = path.join(root, name)): Promise<Host & { fingerprint: string }> {
    const proc = spawnBolt([
      'start', '--role', 'client', '--server', `ws://127.0.0.1:${serverPort}`, '--data', dir, '--name', name,
      '--config', await configFile(name, {}), '--plugins', PLUGINS, '--plugins', PROBE_PLUGINS,
    ], { cwd: root });
    procs.push(proc);
    const [, fp] = await proc.waitForOutput(/"fingerprint":"([A-Za-z0-9_-]{43})"[^\n]*"msg":"client \S+ connecting/);
    return { proc, dir, admin: await adminOf(proc, dir), port: serverPort, sinkPort: 0, fingerprint: fp! };
  }

  /**
   * "Rejecting drops its open session" (README) must hold for every session of the key, the
   * /ingest session with the sink of the same process included: otherwise the rejected host keeps
   * streaming task events and metrics into the results. Returns 'closed' once the client reports
   * its sink connection closed (within 3 s), else whether a task.event it sends then still arrives.
   */
  async function rejectedIngestSession(server: Host, client: Host): Promise<string> {
    const sinkConnected = async () => (await request<{ sink: { connected: boolean } | null }>(client, 'client.status')).sink?.connected === true;
    try {
      return await eventually(async () => ((await sinkConnected()) ? undefined : 'closed'), 3000, 'the /ingest session closed');
    } catch {
      const id = `after-reject-${Date.now()}`;
      await request(client, 'client.send', { v: 1, type: 'task.event', id, runId: 'sec-run', taskId: 'sec-task', host: 'rejected', kind: 'started', at: Date.now() });
      const arrived = await eventually(async () => (await probeEvents<{ id: string }>(server, 'sink.task.event')).events.find((e) => e.id === id), 3000, 'the event').then(() => true, () => false);
      return `still open 3 s after the reject; a task.event the host sent then ${arrived ? 'reached' : 'did not reach'} the server's bus as sink.task.event`;
    }
  }

  async function connectPeer(options: Parameters<typeof TestPeer.connect>[0]): Promise<TestPeer> {
    const peer = await TestPeer.connect({ timeoutMs: 10_000, ...options });
    peers.push(peer);
    return peer;
  }

  describe('keys and pins', () => {
    it('gives an unaccepted key no tasks; once accepted it gets one and acks it; once rejected it is dropped and gets nothing', async () => {
      const server = await startServer('trust-server', { autoAccept: false });
      let client = await startClient('pending-host', server.port);
      const fp = client.fingerprint;
      await client.proc.waitForOutput(/"code":"BOLT_ERR_WIRE_PEER_NOT_ACCEPTED"[^\n]*"msg":"handshake refused"/);

      const pending = await eventually(async () => (await keysCli<KeyEntry[]>(server, 'list')).find((k) => k.fingerprint === fp), 10_000, 'the key in keys list');
      expect(pending).to.include({ role: 'client', state: 'pending', host: 'pending-host' });
      const whilePending = await dispatch(server, [fp]);
      expect(whilePending.sent).to.deep.equal([]);
      expect(whilePending.skipped).to.deep.equal([{ id: fp, reason: 'key pending' }]);
      expect((await sessions(server)).map((s) => s.id)).to.not.include(fp);

      const accepted = await keysCli<KeyEntry>(server, 'accept', fp.slice(0, 12));
      expect(accepted).to.include({ fingerprint: fp, role: 'client', state: 'accepted' });
      await eventually(async () => ((await sessions(server)).some((s) => s.id === fp) ? true : undefined), 20_000, 'the accepted client connected');
      const sent = await dispatch(server, [fp]);
      expect(sent.sent).to.deep.equal([fp]);
      const ack = await eventually(async () => (await probeEvents<Record<string, unknown>>(server, 'task.ack')).events.find((a) => a.ref === sent.commandId), 10_000, 'the task.ack');
      expect(ack).to.include({ hostId: fp, accepted: true, runId: 'sec-run', taskId: 'sec-task' });
      const received = await eventually(async () => {
        const { events } = await probeEvents<TaskDispatchMessage>(client, 'client.task.dispatch');
        return events.length > 0 ? events : undefined;
      }, 10_000, 'client.task.dispatch on the client');
      expect(received.map((c) => c.id)).to.deep.equal([sent.commandId]);

      const rejected = await keysCli<KeyEntry>(server, 'reject', fp);
      expect(rejected).to.include({ fingerprint: fp, state: 'rejected' });
      await eventually(async () => ((await sessions(server)).some((s) => s.id === fp) ? undefined : true), 10_000, 'the rejected client dropped');
      await client.proc.waitForOutput(/"code":4403[^\n]*"msg":"disconnected"/);
      const ingestAfterReject = await rejectedIngestSession(server, client);
      const afterReject = await dispatch(server, [fp]);
      expect(afterReject.sent).to.deep.equal([]);
      expect(afterReject.skipped).to.deep.equal([{ id: fp, reason: 'key rejected' }]);
      expect((await probeEvents(client, 'client.task.dispatch')).total, 'nothing reached the client after the reject').to.equal(1);

      // A restarted agent with the same key is refused at once (4403), and still gets nothing.
      await client.proc.kill();
      const refusedBefore = (await stats(server)).refused.rejected ?? 0;
      client = await startClient('pending-host', server.port, client.dir);
      expect(client.fingerprint).to.equal(fp);
      await client.proc.waitForOutput(/"code":"BOLT_ERR_WIRE_PEER_NOT_ACCEPTED"[^\n]*"msg":"handshake refused"/);
      await eventually(async () => (((await stats(server)).refused.rejected ?? 0) > refusedBefore ? true : undefined), 5000, 'the refusal counted as rejected');
      expect((await dispatch(server, [fp])).skipped).to.deep.equal([{ id: fp, reason: 'key rejected' }]);
      expect((await probeEvents(client, 'client.task.dispatch')).total).to.equal(0);
      expect((await keysCli<KeyEntry[]>(server, 'list')).filter((k) => k.fingerprint === fp).map((k) => `${k.role} ${k.state}`)).to.deep.equal(['client rejected']);
      // Checked last so that everything above runs either way: see rejectedIngestSession.
      expect(ingestAfterReject, 'the rejected host\'s session with the embedded sink').to.equal('closed');
    });

    it('makes a client refuse a server whose key changed, at error level on every attempt, and keep the old pin', async () => {
      const port = await freePort();
      const sinkPort = await freePort();
      const serverA = await startServer('key-a', { autoAccept: true, port, sinkPort });
      const keyA = (await hostKey(serverA)).publicKeyBase64;
      const client = await startClient('pinning-host', port);
      await eventually(async () => ((await sessions(serverA)).some((s) => s.id === client.fingerprint) ? true : undefined), 20_000, 'the client on server A');
      const pinsFile = path.join(transportDir(client), PINS_FILE);
      // The server lists the session when it sends the welcome; the client pins when it has checked it.
      const pinned = await eventually(async () => JSON.parse(await readFile(pinsFile, 'utf8')) as Record<string, { server: string }>, 10_000, 'pins.json written');
      expect(pinned[pinOrigin(`ws://127.0.0.1:${port}`)]?.server).to.equal(keyA);

      // Server A goes away; server B, with its own data dir and so its own key, takes its ports.
      await serverA.proc.kill();
      const serverB = await startServer('key-b', { autoAccept: true, port, sinkPort });
      const keyB = (await hostKey(serverB)).publicKeyBase64;
      expect(keyB).to.not.equal(keyA);
      // The /agent connection's refusals (the client's connection to the sink at A's sink port refuses B's sink as well).
      const agent = `ws://127.0.0.1:${port}/agent`;
      const keyChanged = (proc: BoltProcess) => logLines(proc).filter((l) => l.code === 'BOLT_ERR_WIRE_SERVER_KEY_CHANGED' && l.url === agent);
      const first = await eventually(() => keyChanged(client.proc)[0], 20_000, 'the running client refusing server B');
      expect(first).to.include({ level: 50 });
      expect(first.details).to.include({ presented: fingerprint(keyB), pinned: fingerprint(keyA) });

      // Restarted, it reads the pin from disk and refuses B again on each attempt.
      await client.proc.kill();
      const restarted = await startClient('pinning-host', port, client.dir);
      await eventually(() => (keyChanged(restarted.proc).length >= 2 ? true : undefined), 15_000, 'two refused attempts after the restart');
      expect(keyChanged(restarted.proc).every((l) => l.level === 50)).to.equal(true);
      expect(logLines(restarted.proc).some((l) => l.msg === 'connected'), 'never connected to B').to.equal(false);
      expect(await sessions(serverB)).to.deep.equal([]);
      expect((await stats(serverB)).accepted).to.equal(0);
      // The client stops before proving its own key, so B never even learns it.
      expect((await request<KeyEntry[]>(serverB, 'transport.keys.list')).map((k) => k.fingerprint)).to.not.include(client.fingerprint);
      expect(JSON.parse(await readFile(pinsFile, 'utf8'))).to.deep.equal(pinned);
    });
  });

  describe('signed commands', () => {
    it('refuses unsigned, tampered, expired and replayed dispatches with their codes, logs and acks each, and remembers across a restart', async () => {
      const mini = await MiniServer.start({ heartbeatIntervalMs: 1000 });
      minis.push(mini);
      const dir = path.join(root, 'command-host');
      let client = await startClient('command-host', mini.port, dir);
      await eventually(() => (mini.live.length === 1 ? true : undefined), 20_000, 'the client connected to the responder');
      const peer = mini.live[0]!;
      const ackOf = (id: string, nth = 0) => eventually(() => peer.acks.filter((a) => a.ref === id)[nth], 10_000, `ack ${nth} of ${id}`);

      // The client runs what it accepts (its action plugins are loaded): a harmless action throughout.
      const sleep = { action: 'sleep', with: { duration: '1ms' } };
      const good = mini.dispatch({ id: 'good-1', ...sleep });
      expect(await ackOf('good-1')).to.include({ accepted: true, runId: 'run-1', taskId: 'task-1' });
      const { sig: _sig, ...unsigned } = { ...good, id: 'unsigned-1' };
      mini.sendText(JSON.stringify(unsigned));
      mini.sendText(JSON.stringify({ ...mini.dispatch({ id: 'tampered-1', ...sleep }, []), with: { duration: '1h' } }));
      mini.dispatch({ id: 'expired-1', ...sleep, expiresAt: localClock() - 1000 });
      mini.sendText(JSON.stringify(good));
      const expected: Array<[string, string, number]> = [
        ['unsigned-1', 'BOLT_ERR_WIRE_UNSIGNED', 0],
        ['tampered-1', 'BOLT_ERR_WIRE_BAD_SIGNATURE', 0],
        ['expired-1', 'BOLT_ERR_WIRE_EXPIRED', 0],
        ['good-1', 'BOLT_ERR_WIRE_REPLAYED', 1],
      ];
      for (const [id, code, nth] of expected) {
        expect(await ackOf(id, nth), id).to.include({ accepted: false, code });
        const logged = await eventually(() => logLines(client.proc).find((l) => l.id === id && l.code === code), 5000, `the log line refusing ${id}`);
        expect(logged).to.include({ level: 40, msg: `command ${id} refused: ${code}` });
      }
      const acted = await probeEvents<TaskDispatchMessage>(client, 'client.task.dispatch');
      expect(acted.events.map((c) => c.id), 'only the verified command reaches the bus').to.deep.equal(['good-1']);

      // Killed and started again on the same data dir: the command it ran is still refused.
      await client.proc.kill();
      await eventually(() => (mini.live.length === 0 ? true : undefined), 10_000, 'the responder seeing the client go');
      client = await startClient('command-host', mini.port, dir);
      await eventually(() => (mini.live.length === 1 ? true : undefined), 20_000, 'the restarted client connected');
      const again = mini.live[0]!;
      mini.sendText(JSON.stringify(good), [again]);
      mini.dispatch({ id: 'good-2', ...sleep }, [again]);
      await eventually(() => (again.acks.length === 2 ? true : undefined), 10_000, 'two acks after the restart');
      expect(again.acks.map((a) => `${a.ref} ${a.accepted} ${a.code ?? '-'}`)).to.deep.equal(['good-1 false BOLT_ERR_WIRE_REPLAYED', 'good-2 true -']);
      expect(logLines(client.proc).find((l) => l.id === 'good-1')).to.include({ level: 40, code: 'BOLT_ERR_WIRE_REPLAYED' });
      const actedAfter = await eventually(async () => {
        const { events } = await probeEvents<TaskDispatchMessage>(client, 'client.task.dispatch');
        return events.length > 0 ? events : undefined;
      }, 5000, 'good-2 on the restarted client');
      expect(actedAfter.map((c) => c.id)).to.deep.equal(['good-2']);
    });
  });

  describe('a running server under attack', function () {
    this.timeout(60_000);
    let server: Host;
    let steady: Host & { fingerprint: string };
    let steadySession: string;
    let agentUrl: string;

    before(async () => {
      // Fuzzing peers are disconnected for garbage every 21 messages and reconnect thousands of
      // times: the handshake rate limit is raised so admission control does not slow them down.
      server = await startServer('attacked', {
        autoAccept: true,
        transport: { heartbeatIntervalMs: 250, handshakesPerSec: 100_000, handshakeBurst: 100_000 },
        logLevel: 'info',
      });
      agentUrl = `ws://127.0.0.1:${server.port}/agent`;
      steady = await startClient('steady-host', server.port);
      steadySession = await eventually(async () => (await sessions(server)).find((s) => s.id === steady.fingerprint)?.sessionId, 20_000, 'the steady client connected');
    });

    /** The steady real client still holds the session it had from the start, and a heartbeat of it arrives after now. */
    async function expectSteadyServed(): Promise<void> {
      const lastBeat = async () => (await request<Array<{ id: string; lastHeartbeatAt: number | null }>>(server, 'health.hosts')).find((h) => h.id === steady.fingerprint)?.lastHeartbeatAt ?? 0;
      const mark = await lastBeat();
      await eventually(async () => ((await lastBeat()) > mark ? true : undefined), 5000, 'a heartbeat of the steady client');
      expect((await sessions(server)).find((s) => s.id === steady.fingerprint)?.sessionId, 'the steady session').to.equal(steadySession);
    }

    it('never accepts a client key as a sink: pending at /agent even under --auto-accept, refused at the sink\'s /ingest', async () => {
      const clientKey = await hostKey(steady);
      expect(clientKey.fingerprint).to.equal(steady.fingerprint);
      const before = await stats(server);

      // The trust store keys entries by fingerprint AND role; auto-accept never accepts a key already known in another role.
      for (let attempt = 0; attempt < 2; attempt++) {
        const asSink = await refusal(TestPeer.connect({ url: agentUrl, identity: clientKey, role: 'sink', timeoutMs: 10_000 }));
        expect(asSink).to.include({ code: 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED', closeCode: 4401 });
      }
      const entries = (await request<KeyEntry[]>(server, 'transport.keys.list')).filter((k) => k.fingerprint === steady.fingerprint);
      expect(entries.map((k) => `${k.role} ${k.state}`).sort()).to.deep.equal(['client accepted', 'sink pending']);
      expect((await stats(server)).refused['not-accepted']).to.equal((before.refused['not-accepted'] ?? 0) + 2);

      // The sink's /ingest serves clients only: any key claiming the sink role is refused before the challenge.
      for (const identity of [clientKey, generateIdentity()]) {
        const atIngest = await refusal(TestPeer.connect({ url: `ws://127.0.0.1:${server.sinkPort}/ingest`, identity, role: 'sink', timeoutMs: 10_000 }));
        expect(atIngest).to.include({ code: 'BOLT_ERR_WIRE_ROLE_REFUSED', closeCode: 4403 });
      }
      expect((await sessions(server)).filter((s) => s.role === 'sink')).to.deep.equal([]);
      await expectSteadyServed();
    });

    it('closes the connection that sends a 2 MiB frame with 1009, and nothing else', async () => {
      const before = await stats(server);
      const big = await connectPeer({ url: agentUrl, host: 'big-frame' });
      const other = await connectPeer({ url: agentUrl, host: 'bystander' });
      big.ws.send(Buffer.alloc(2 * MiB, 'x'));
      expect((await big.closed).code).to.equal(1009);
      expect((await other.ping()).type).to.equal('clock.pong');
      const after = await stats(server);
      expect(after.tooBig).to.equal(before.tooBig + 1);
      expect(after.connections).to.equal(before.connections + 1);
      await server.proc.waitForOutput(/"host":"big-frame"[^\n]*"code":1009,"reason":"too big"/);
      await expectSteadyServed();
      other.close();
      await other.closed;
    });

    it('refuses upgrade requests with 5000 headers (431) on both ports, without a WebSocket', async () => {
      const before = await stats(server);
      const upgrade = (pathname: string, header: (i: number) => string) => [
        `GET ${pathname} HTTP/1.1`,
        'Host: 127.0.0.1',
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        ...Array.from({ length: 5000 }, (_, i) => header(i)),
      ];
      // Short headers stay under Node's 16 KiB header limit and reach the endpoint's count; long ones hit the limit first.
      for (const header of [(i: number) => `a${i % 10}:b`, (i: number) => `x-filler-${i}: ${'v'.repeat(20)}`]) {
        expect(await rawRequest(server.port, upgrade('/agent', header))).to.match(/^HTTP\/1\.1 431 /);
        expect(await rawRequest(server.sinkPort, upgrade('/ingest', header))).to.match(/^HTTP\/1\.1 431 /);
      }
      const after = await stats(server);
      expect(after.refused.headers).to.equal(before.refused.headers! + 1);
      expect(after.accepted).to.equal(before.accepted);
      await expectSteadyServed();
    });

    it('drops a peer that stops reading before its unsent data passes the bound, with the server\'s memory bounded', async () => {
      const slow = await connectPeer({ url: agentUrl, host: 'slow-reader' });
      const socket = (slow.ws as unknown as { _socket: Socket })._socket;
      socket.pause();
      const before = await stats(server);
      const rssBefore = await rssOf(server.proc.proc.pid!);
      const pad = 'p'.repeat(256 * 1024);
      // Up to 64 MiB of dispatches: without a bound on the send buffer all of it would sit in the server's memory.
      const maxDispatches = 256;
      let pushed = 0;
      let dropped: DispatchResult | undefined;
      let rssPeak = rssBefore;
      const deadline = Date.now() + 20_000;
      for (let i = 0; i < maxDispatches && dropped === undefined && Date.now() < deadline; i++) {
        const result = await dispatch(server, [slow.identity.fingerprint], { with: { pad } });
        if (result.sent.length === 1) pushed += pad.length;
        else dropped = result;
        if (i % 8 === 0) rssPeak = Math.max(rssPeak, await rssOf(server.proc.proc.pid!));
      }
      rssPeak = Math.max(rssPeak, await rssOf(server.proc.proc.pid!));
      expect(dropped, `still connected after ${pushed / MiB} MiB`).to.not.equal(undefined);
      expect(dropped!.skipped[0]?.reason).to.be.oneOf(['send buffer full', 'not connected']);
      // maxBufferedBytes (4 MiB) in the server, plus the few MiB of loopback socket buffers a reader that never reads gets.
      expect(pushed, 'bytes accepted for the slow peer before the drop').to.be.below(24 * MiB);
      expect(rssPeak - rssBefore, `server RSS grew from ${(rssBefore / MiB).toFixed(0)} to ${(rssPeak / MiB).toFixed(0)} MiB`).to.be.below(48 * MiB);
      const after = await stats(server);
      console.log(`      slow reader: dropped after ${(pushed / MiB).toFixed(2)} MiB of dispatches; server RSS ${(rssBefore / MiB).toFixed(0)} MiB before, ${(rssPeak / MiB).toFixed(0)} MiB peak`);
      expect(after.droppedSlow).to.equal(before.droppedSlow + 1);
      expect((await sessions(server)).map((s) => s.id)).to.not.include(slow.identity.fingerprint);
      socket.resume();
      await slow.closed;
      await expectSteadyServed();
    });

    it('stays up, serving the others with bounded memory, through 100,000 random malformed messages from authenticated peers', async function () {
      this.timeout(60_000);
      const seed = Number(process.env.BOLT_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
      const why = `(fast-check seed ${seed}; BOLT_FUZZ_SEED=${seed} repeats it)`;
      const planStarted = performance.now();
      const fuzz = fuzzPlan(seed);
      const planMs = performance.now() - planStarted;
      const fuzzers = Array.from({ length: 8 }, () => generateIdentity());
      const healthy = await connectPeer({ url: agentUrl, host: 'healthy' });
      const pluginsBefore = await transportPlugin(server);
      const before = await stats(server);
      const rssBefore = await rssOf(server.proc.proc.pid!);
      const cpuBefore = await cpuMsOf(server.proc.proc.pid!);
      const rssSamples: number[] = [];
      const rtts: number[] = [];
      const pongsAt: number[] = [];
      const started = performance.now();
      let running = true;
      let pingFailure: Error | undefined;

      // The healthy peer pings every 100 ms throughout and times every answer (ping() gives up after 3 s).
      const pinger = (async () => {
        while (running) {
          const sentAt = performance.now();
          await healthy.ping();
          rtts.push(performance.now() - sentAt);
          pongsAt.push(performance.now());
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      })().catch((err: Error) => {
        pingFailure = err;
      });
      const sampler = setInterval(() => {
        void rssOf(server.proc.proc.pid!).then((rss) => rssSamples.push(rss), () => {});
      }, 250);

      const outcome = { sealedConnections: 0, rawConnections: 0, garbage: 0, valid: 0, closes: new Map<string, number>(), failedHandshakes: [] as string[] };
      // A handshake that fails (on this shared machine, a timeout under someone else's load) is retried, a few times in all.
      const maxFailedHandshakes = 10;
      const connectFuzzer = async (identity: Identity): Promise<TestPeer> => {
        for (;;) {
          try {
            return await TestPeer.connect({ url: agentUrl, identity, host: 'fuzzer', timeoutMs: 10_000 });
          } catch (err) {
            outcome.failedHandshakes.push((err as Error).message);
            if (outcome.failedHandshakes.length > maxFailedHandshakes) {
              throw new Error(`${outcome.failedHandshakes.length} fuzzer handshakes failed (${outcome.failedHandshakes.join('; ')}); server refusals ${JSON.stringify((await stats(server)).refused)}`);
            }
          }
        }
      };
      const deadline = Date.now() + 45_000;
      let nextChunk = 0;
      let nextRaw = 0;
      try {
        await Promise.all(fuzzers.map(async (identity) => {
          while (Date.now() < deadline) {
            // Claimed before connecting: the other fuzzers run while this one awaits its handshake.
            const chunk = fuzz.chunks[nextChunk];
            const raw = chunk === undefined ? fuzz.raw[nextRaw] : undefined;
            if (chunk === undefined && raw === undefined) return;
            if (chunk !== undefined) nextChunk++;
            else nextRaw++;
            const peer = await connectFuzzer(identity);
            if (chunk !== undefined) {
              for (const { text, garbage } of chunk) {
                peer.sendBody(text);
                if (garbage) outcome.garbage++;
                else outcome.valid++;
              }
              outcome.sealedConnections++;
            } else {
              peer.ws.send(raw!);
              outcome.rawConnections++;
            }
            const { code, reason } = await peer.closed;
            outcome.closes.set(`${code} ${reason}`, (outcome.closes.get(`${code} ${reason}`) ?? 0) + 1);
          }
        }));
      } finally {
        running = false;
        clearInterval(sampler);
        await pinger;
      }
      const fuzzMs = performance.now() - started;
      const after = await stats(server);
      const rssAfter = await rssOf(server.proc.proc.pid!);
      const serverCpuS = ((await cpuMsOf(server.proc.proc.pid!)) - cpuBefore) / 1000;
      const summary = `${outcome.sealedConnections} sealed + ${outcome.rawConnections} raw connections (${outcome.failedHandshakes.length} failed handshakes retried${outcome.failedHandshakes.length > 0 ? `: ${outcome.failedHandshakes.join('; ')}` : ''}), ${outcome.garbage} malformed + ${outcome.valid} valid messages in ${(fuzzMs / 1000).toFixed(1)} s (server CPU ${serverCpuS.toFixed(1)} s; generated in ${(planMs / 1000).toFixed(1)} s); closes ${JSON.stringify([...outcome.closes])}; ${why}`;
      const marks = [started, ...pongsAt, started + fuzzMs];
      const longestGap = Math.max(...marks.slice(1).map((at, i) => at - marks[i]!));
      const pongs = `${pongsAt.length} pongs, RTT median ${median(rtts).toFixed(1)} ms, max ${Math.max(...rtts).toFixed(0)} ms, longest gap ${longestGap.toFixed(0)} ms`;
      const peak = Math.max(...rssSamples, rssAfter);
      const half = rssSamples[Math.floor(rssSamples.length / 2)] ?? rssBefore;
      const mib = (n: number) => (n / MiB).toFixed(0);
      const memory = `server RSS ${mib(rssBefore)} MiB before, ${mib(half)} halfway, ${mib(peak)} peak, ${mib(rssAfter)} after`;
      console.log(`      fuzz: ${summary}; ${memory}; ${pongs}`);

      expect(outcome.sealedConnections, summary).to.equal(fuzz.chunks.length);
      expect(outcome.rawConnections, summary).to.equal(fuzz.raw.length);
      expect(outcome.garbage, summary).to.be.at.least(MALFORMED_TOTAL);
      // Each sealed connection was closed for garbage at its 21st malformed message, each raw one for its frame.
      expect([...outcome.closes], summary).to.deep.equal([['1008 garbage', fuzz.chunks.length], ['1008 bad frame', fuzz.raw.length]]);
      expect(after.garbage - before.garbage, `garbage counted in transport.stats ${why}`).to.equal(outcome.garbage);
      expect(after.garbageDisconnects - before.garbageDisconnects, why).to.equal(fuzz.chunks.length);
      expect(after.badFrames - before.badFrames, why).to.equal(fuzz.raw.length);
      expect(after.handlerErrors - before.handlerErrors, `handler exceptions ${why}`).to.equal(0);
      expect(after.rateLimited, why).to.equal(before.rateLimited);
      expect(after.connections, 'the steady client and the healthy peer remain').to.equal(before.connections);

      // Up and serving throughout: no plugin restart, every ping answered, never long without a pong
      // (generous for a shared 2-core machine: answers take milliseconds here, see the log line).
      expect(server.proc.proc.exitCode).to.equal(null);
      expect(await transportPlugin(server)).to.deep.equal(pluginsBefore);
      expect(pingFailure?.message, 'the healthy peer\'s pings').to.equal(undefined);
      expect(longestGap, pongs).to.be.below(2000);
      expect(Math.max(...rtts), pongs).to.be.below(2000);
      await expectSteadyServed();

      // Memory does not grow with the number of messages: what the fuzz adds is the working memory of a few connections.
      expect(peak - rssBefore, memory).to.be.below(48 * MiB);
      expect(rssAfter - half, memory).to.be.below(16 * MiB);
    });
  });
});

async function transportPlugin(node: Host): Promise<{ state: string; restarts: number; since: string }> {
  const res = await fetch(`${node.admin.url}/api/plugins`, { headers: { authorization: `Bearer ${node.admin.token}` } });
  const { plugins } = (await res.json()) as { plugins: Array<{ name: string; state: string; restarts: number; since: string }> };
  const { state, restarts, since } = plugins.find((p) => p.name === 'transport-ws')!;
  return { state, restarts, since };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/** Malformed messages a peer may send per connection before the server's garbage meter disconnects it. */
const GARBAGE_PER_CONNECTION = 21;
const MALFORMED_TOTAL = 100_000;
const RAW_CONNECTIONS = 100;

/** One session body to send, and whether the server's decoder refuses it. */
interface FuzzMessage {
  text: string;
  garbage: boolean;
}

/**
 * The fuzz plan: random bodies (generated by fast-check from `seed`) cut into chunks of exactly
 * GARBAGE_PER_CONNECTION malformed messages (with the valid ones that fell between them), so each
 * sealed connection ends on its last message; and RAW_CONNECTIONS unsealed frames, one per connection.
 * Each body is classified by a decoder built like the server's for a client (heartbeat, clock.ping,
 * task.ack and error are routed), so the test knows exactly how much garbage the server must count.
 */
function fuzzPlan(seed: number): { chunks: FuzzMessage[][]; raw: Array<string | Buffer> } {
  const passThrough = (m: unknown) => m;
  const decoder = createDecoder('client->server', new Map(['heartbeat', 'clock.ping', 'task.ack', 'error'].map((t) => [t, passThrough])));
  const arbitrary = fuzzBody();
  const chunks: FuzzMessage[][] = [];
  let chunk: FuzzMessage[] = [];
  let garbageInChunk = 0;
  const target = Math.ceil(MALFORMED_TOTAL / GARBAGE_PER_CONNECTION);
  for (let batch = 0; chunks.length < target; batch++) {
    for (const text of fc.sample(arbitrary, { seed: seed + batch, numRuns: 5000 })) {
      const garbage = !decoder.decode(text).ok;
      chunk.push({ text, garbage });
      if (garbage && ++garbageInChunk === GARBAGE_PER_CONNECTION) {
        chunks.push(chunk);
        chunk = [];
        garbageInChunk = 0;
        if (chunks.length === target) break;
      }
    }
  }
  const raw = fc.sample(fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 512 }).map((bytes) => Buffer.from(bytes)),
    fc.record({ sid: fc.string({ maxLength: 30 }), seq: fc.integer(), mac: fc.base64String({ minLength: 43, maxLength: 44 }), body: fc.string({ maxLength: 100 }) }).map((frame) => JSON.stringify(frame)),
    fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value) ?? 'null'),
  ), { seed: seed - 1, numRuns: RAW_CONNECTIONS });
  return { chunks, raw };
}

/** Random session bodies: mostly malformed, in the ways the issue names; some turn out valid. */
function fuzzBody(): fc.Arbitrary<string> {
  const samples = sampleMessages() as unknown as Record<MessageType, Record<string, unknown>>;
  const allTypes = Object.keys(samples) as MessageType[];
  const clientTypes: MessageType[] = ['heartbeat', 'clock.ping', 'task.ack', 'error'];
  const sampleType = fc.oneof({ arbitrary: fc.constantFrom(...clientTypes), weight: 3 }, { arbitrary: fc.constantFrom(...allTypes), weight: 1 });
  const trickyType = fc.oneof(
    fc.constantFrom<string>(...allTypes, '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', ''),
    fc.string({ maxLength: 20 }),
  );
  const anyKey = fc.oneof(fc.constantFrom('__proto__', 'constructor', 'prototype', 'v', 'type', 'id', 't0', 'at', 'ref', 'accepted', 'code', 'load1', 'sig'), fc.string({ maxLength: 12 }));
  const wrongValue = fc.oneof(fc.string({ maxLength: 30 }), fc.boolean(), fc.constant(null), fc.array(fc.integer(), { maxLength: 4 }), fc.object({ maxDepth: 2 }), fc.integer(), fc.double());
  /** Sets an own property, even one named __proto__, so JSON.stringify writes it. */
  const setOwn = (target: Record<string, unknown>, key: string, value: unknown) => Object.defineProperty(target, key, { value, enumerable: true, configurable: true, writable: true });
  const fieldOf = (message: Record<string, unknown>, index: number) => {
    const keys = Object.keys(message);
    return keys[index % keys.length]!;
  };

  const anyJson = fc.jsonValue({ maxDepth: 4 }).map((value) => JSON.stringify(value) ?? 'null');

  const mutatedEnvelope = fc
    .tuple(sampleType, fc.array(fc.oneof(
      fc.record({ op: fc.constant('set' as const), key: anyKey, value: fc.jsonValue({ maxDepth: 3 }) }),
      fc.record({ op: fc.constant('delete' as const), index: fc.nat() }),
      fc.record({ op: fc.constant('type' as const), value: trickyType }),
    ), { minLength: 1, maxLength: 4 }))
    .map(([type, ops]) => {
      const message = structuredClone(samples[type]);
      for (const op of ops) {
        if (op.op === 'set') setOwn(message, op.key, op.value);
        else if (op.op === 'delete') delete message[fieldOf(message, op.index)];
        else message.type = op.value;
      }
      return JSON.stringify(message);
    });

  const wrongFieldType = fc.tuple(fc.constantFrom(...clientTypes), fc.nat(), wrongValue).map(([type, index, value]) => {
    const message = structuredClone(samples[type]);
    message[fieldOf(message, index)] = value;
    return JSON.stringify(message);
  });

  const prototypeKeys = fc
    .tuple(fc.constantFrom(...clientTypes), fc.constantFrom('__proto__', 'constructor', 'prototype'), fc.jsonValue({ maxDepth: 2 }), fc.boolean())
    .map(([type, key, value, nested]) => {
      const message = structuredClone(samples[type]);
      if (nested) setOwn(message, 'labels', JSON.parse(`{"${key}":${JSON.stringify(value) ?? 'null'}}`));
      else setOwn(message, key, key === 'constructor' ? { prototype: value } : value);
      return JSON.stringify(message);
    });

  const hugeNumber = fc
    .tuple(
      fc.constantFrom(...clientTypes),
      fc.nat(),
      fc.oneof(
        fc.constantFrom('1e400', '-1e400', '1e308', '-1.7976931348623157e308', '4.9e-324', '1e-400', '-0', '9007199254740993', '123456789012345678901234567890123456789012345678901234567890', 'NaN', 'Infinity', '0x10', '1_000'),
        fc.double().map(String),
        fc.bigInt({ min: -(2n ** 256n), max: 2n ** 256n }).map(String),
      ),
    )
    .map(([type, index, literal]) => {
      const message = structuredClone(samples[type]);
      message[fieldOf(message, index)] = '\u0000NUMBER\u0000';
      return JSON.stringify(message).replace('"\\u0000NUMBER\\u0000"', literal);
    });

  const deepNesting = fc.tuple(fc.integer({ min: 10, max: 3000 }), fc.constantFrom('[', '{"a":'), fc.boolean()).map(([depth, open, wrapped]) => {
    const close = open === '[' ? ']' : '}';
    const nested = `${open.repeat(depth)}1${close.repeat(depth)}`;
    return wrapped ? `{"v":1,"type":"heartbeat","id":"deep","facts":${nested}}` : nested;
  });

  const notJson = fc.oneof(
    fc.string({ maxLength: 200, unit: 'binary' }),
    fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes).toString('latin1')),
    fc.tuple(fc.constantFrom(...clientTypes), fc.array(fc.tuple(fc.nat(), fc.string({ maxLength: 3, unit: 'binary' }), fc.nat({ max: 3 })), { minLength: 1, maxLength: 3 })).map(([type, edits]) => {
      let text = JSON.stringify(samples[type]);
      for (const [at, insert, remove] of edits) {
        const i = at % (text.length + 1);
        text = text.slice(0, i) + insert + text.slice(i + remove);
      }
      return text;
    }),
  );

  return fc.oneof(
    { arbitrary: anyJson, weight: 2 },
    { arbitrary: mutatedEnvelope, weight: 3 },
    { arbitrary: wrongFieldType, weight: 2 },
    { arbitrary: prototypeKeys, weight: 1 },
    { arbitrary: hugeNumber, weight: 1 },
    { arbitrary: deepNesting, weight: 1 },
    { arbitrary: notJson, weight: 2 },
  );
}

