import { expect } from 'chai';
import { generateIdentity } from '../../protocol/identity.ts';
import type { Session } from '../../protocol/session.ts';
import { expectBoltError, handshakePair } from './helpers.ts';

describe('transport-ws protocol: session frames', () => {
  const serverId = generateIdentity();
  const clientId = generateIdentity();

  function pair(): { client: Session; server: Session } {
    return handshakePair({
      client: { identity: clientId, role: 'client', expectRole: 'server' },
      server: { identity: serverId, role: 'server', acceptRoles: ['client'], authorize: () => true },
    });
  }

  /** Re-serializes a frame after changing it. */
  function edit(frame: string, change: (f: { sid: string; seq: number; mac: string; body: string }) => void): string {
    const f = JSON.parse(frame);
    change(f);
    return JSON.stringify(f);
  }

  it('opens what the peer sealed, in order, in both directions, and counts frames', () => {
    const { client, server } = pair();
    const bodies: string[] = [];
    for (let i = 0; i < 50; i++) bodies.push(server.open(client.seal({ v: 1, type: 'heartbeat', id: `h${i}`, text: 'é✓\u2028"quoted"' })));
    expect(bodies.map((b) => JSON.parse(b).id)).to.deep.equal(Array.from({ length: 50 }, (_, i) => `h${i}`));
    expect(JSON.parse(bodies[0]!).text).to.equal('é✓\u2028"quoted"');
    expect(client.open(server.seal({ ok: true }))).to.equal('{"ok":true}');
    expect([client.sent, server.received, server.sent, client.received]).to.deep.equal([50, 50, 1, 1]);
  });

  it('accepts frames as bytes (what ws delivers)', () => {
    const { client, server } = pair();
    expect(server.open(Buffer.from(client.seal({ a: 1 })))).to.equal('{"a":1}');
  });

  it('refuses a frame whose body was altered by one byte', () => {
    const { client, server } = pair();
    const frame = edit(client.seal({ run: 'echo hi' }), (f) => (f.body = f.body.replace('hi', 'ho')));
    expectBoltError(() => server.open(frame), 'BOLT_ERR_WIRE_BAD_MAC');
  });

  it('refuses a frame whose MAC was altered', () => {
    const { client, server } = pair();
    const frame = edit(client.seal({ a: 1 }), (f) => (f.mac = (f.mac[0] === 'A' ? 'B' : 'A') + f.mac.slice(1)));
    expectBoltError(() => server.open(frame), 'BOLT_ERR_WIRE_BAD_MAC');
  });

  it('refuses a frame from another session, also when relabelled with this session id', () => {
    const a = pair();
    const b = pair();
    const frame = a.client.seal({ a: 1 });
    expectBoltError(() => b.server.open(frame), 'BOLT_ERR_WIRE_WRONG_SESSION');
    // b.server is broken now; a fresh session shows the MAC catches a forged session id.
    const c = pair();
    expectBoltError(() => c.server.open(edit(frame, (f) => (f.sid = c.server.id))), 'BOLT_ERR_WIRE_BAD_MAC');
  });

  it('refuses a replayed frame', () => {
    const { client, server } = pair();
    const frame = client.seal({ type: 'task.ack' });
    server.open(frame);
    expectBoltError(() => server.open(frame), 'BOLT_ERR_WIRE_OUT_OF_SEQUENCE');
  });

  it('refuses a frame that skips a sequence number (a dropped frame)', () => {
    const { client, server } = pair();
    server.open(client.seal({ n: 0 }));
    client.seal({ n: 1 });
    expectBoltError(() => server.open(client.seal({ n: 2 })), 'BOLT_ERR_WIRE_OUT_OF_SEQUENCE');
  });

  it('refuses a frame with a rewritten sequence number', () => {
    const { client, server } = pair();
    client.seal({ n: 0 });
    expectBoltError(() => server.open(edit(client.seal({ n: 1 }), (f) => (f.seq = 0))), 'BOLT_ERR_WIRE_BAD_MAC');
  });

  it('refuses a frame reflected back to its sender', () => {
    const { client } = pair();
    expectBoltError(() => client.open(client.seal({ a: 1 })), 'BOLT_ERR_WIRE_BAD_MAC');
  });

  it('refuses everything after the first bad frame, even good frames', () => {
    const { client, server } = pair();
    const good = client.seal({ n: 0 });
    expectBoltError(() => server.open(edit(good, (f) => (f.body = '{"n":1}'))), 'BOLT_ERR_WIRE_BAD_MAC');
    expect(server.broken).to.equal(true);
    expectBoltError(() => server.open(good), 'BOLT_ERR_WIRE_SESSION_BROKEN');
  });

  it('refuses oversized and malformed frames before checking them', () => {
    const { client, server } = pair();
    // Invalid JSON too: the size check comes first.
    expectBoltError(() => server.open('x'.repeat(1024 * 1024 + 1)), 'BOLT_ERR_WIRE_TOO_LARGE');
    const malformed = ['not json', '[]', 'null', '{"sid":"x","seq":0,"mac":"a","body":"{}"}', edit(client.seal({}), (f) => (f.seq = -1)), edit(client.seal({}), (f) => Object.assign(f, { extra: 1 }))];
    for (const frame of malformed) expectBoltError(() => pair().server.open(frame), 'BOLT_ERR_WIRE_MALFORMED');
  });
});
