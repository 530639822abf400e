import { expect } from 'chai';
import type { TaskDispatchMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { canonicalJson } from '../../protocol/canonical-json.ts';
import { signCommand, verifyCommand, type CommandBody } from '../../protocol/command.ts';
import { generateIdentity } from '../../protocol/identity.ts';
import { ReplayGuard } from '../../protocol/replay-guard.ts';
import { createDecoder } from '../../protocol/codec.ts';
import { expectBoltError, tempDir } from './helpers.ts';

describe('transport-ws protocol: signed commands', () => {
  const server = generateIdentity();
  const now = 1_700_000_000_000;
  let seq = 0;

  function dispatchBody(overrides: Partial<CommandBody<TaskDispatchMessage>> = {}): CommandBody<TaskDispatchMessage> {
    return {
      v: 1,
      type: 'task.dispatch',
      id: `cmd-${++seq}`,
      runId: 'run-1',
      taskId: 'install',
      action: 'shell',
      with: { run: 'apt-get install -y nginx', env: { A: '1' } },
      startAt: null,
      timeoutMs: 300_000,
      expiresAt: now + 60_000,
      ...overrides,
    };
  }

  function guard(): ReplayGuard {
    const g = ReplayGuard.open(tempDir(), { now: () => now });
    after(() => g.close());
    return g;
  }

  /** What the client receives: the signed command after a trip through JSON and the decoder. */
  function received<T>(command: T): T {
    const decoder = createDecoder('server->client', new Map([['task.dispatch', (m) => m], ['task.cancel', (m) => m]]));
    const result = decoder.decode(JSON.stringify(command));
    if (!result.ok) throw new Error(result.message);
    return result.message as T;
  }

  it('a command signed once verifies on every client, whatever the key order on the way', () => {
    const signed = signCommand(dispatchBody(), server.privateKey);
    const reordered = Object.fromEntries(Object.entries(received(signed)).reverse()) as TaskDispatchMessage;
    for (let client = 0; client < 3; client++) {
      const cmd = verifyCommand(client === 0 ? received(signed) : reordered, server.publicKey, { now, replayGuard: guard() });
      expect(cmd.with).to.deep.equal({ run: 'apt-get install -y nginx', env: { A: '1' } });
    }
  });

  it('refuses a command with one byte of `with` changed', () => {
    const signed = received(signCommand(dispatchBody(), server.privateKey));
    const tampered = { ...signed, with: { ...signed.with, run: 'apt-get install -y nginy' } };
    expectBoltError(() => verifyCommand(tampered, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_BAD_SIGNATURE');
    // and the untouched one still verifies
    verifyCommand(signed, server.publicKey, { now, replayGuard: guard() });
  });

  it('refuses a command whose expiry, start time or target was changed', () => {
    const signed = received(signCommand(dispatchBody(), server.privateKey));
    const g = guard();
    for (const change of [{ expiresAt: signed.expiresAt + 1 }, { startAt: now + 5000 }, { taskId: 'payload' }, { id: 'cmd-other' }]) {
      expectBoltError(() => verifyCommand({ ...signed, ...change }, server.publicKey, { now, replayGuard: g }), 'BOLT_ERR_WIRE_BAD_SIGNATURE');
    }
    expect(g.size).to.equal(0);
  });

  it('refuses a cancel turned into a dispatch: the type is signed', () => {
    const cancel = signCommand({ v: 1, type: 'task.cancel', id: 'cmd-c', runId: 'run-1', expiresAt: now + 1000 }, server.privateKey);
    const asDispatch = { ...dispatchBody({ id: 'cmd-c', expiresAt: now + 1000 }), sig: cancel.sig };
    expectBoltError(() => verifyCommand(asDispatch, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_BAD_SIGNATURE');
  });

  it('refuses a command signed by another key than the pinned one', () => {
    const signed = signCommand(dispatchBody(), generateIdentity().privateKey);
    expectBoltError(() => verifyCommand(signed, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_BAD_SIGNATURE');
  });

  it('refuses an unsigned command, at the decoder and again at verification', () => {
    const decoder = createDecoder('server->client', new Map([['task.dispatch', (m) => m]]));
    const atDecoder = decoder.decode(JSON.stringify(dispatchBody()));
    expect(atDecoder.ok === false && atDecoder.code).to.equal('BOLT_ERR_WIRE_MALFORMED');
    for (const sig of [undefined, '', null]) {
      const unsigned = { ...dispatchBody(), ...(sig !== undefined && { sig }) } as TaskDispatchMessage;
      expectBoltError(() => verifyCommand(unsigned, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_UNSIGNED');
    }
    expectBoltError(() => verifyCommand({ ...dispatchBody(), sig: 'not base64 at all' }, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_BAD_SIGNATURE');
  });

  it('refuses an expired command and one that expires implausibly far ahead', () => {
    const signed = signCommand(dispatchBody({ expiresAt: now + 1000 }), server.privateKey);
    verifyCommand(signed, server.publicKey, { now: now + 999, replayGuard: guard() });
    const err = expectBoltError(() => verifyCommand(signed, server.publicKey, { now: now + 1000, replayGuard: guard() }), 'BOLT_ERR_WIRE_EXPIRED');
    expect(err.details).to.deep.include({ expiresAt: now + 1000, now: now + 1000 });
    const far = signCommand(dispatchBody({ expiresAt: now + 3 * 24 * 3600_000 }), server.privateKey);
    expectBoltError(() => verifyCommand(far, server.publicKey, { now, replayGuard: guard() }), 'BOLT_ERR_WIRE_EXPIRY_TOO_FAR');
    verifyCommand(far, server.publicKey, { now, replayGuard: guard(), maxLifetimeMs: 4 * 24 * 3600_000 });
  });

  it('refuses a replayed command', () => {
    const signed = signCommand(dispatchBody(), server.privateKey);
    const g = guard();
    verifyCommand(received(signed), server.publicKey, { now, replayGuard: g });
    const err = expectBoltError(() => verifyCommand(received(signed), server.publicKey, { now: now + 10, replayGuard: g }), 'BOLT_ERR_WIRE_REPLAYED');
    expect(err.details).to.deep.equal({ id: signed.id });
  });

  it('refuses a replayed command after the client restarts (replay guard reloaded from disk)', () => {
    const dir = tempDir();
    const signed = signCommand(dispatchBody(), server.privateKey);
    const before = ReplayGuard.open(dir, { now: () => now });
    verifyCommand(signed, server.publicKey, { now, replayGuard: before });
    before.close();
    const afterRestart = ReplayGuard.open(dir, { now: () => now + 30_000 });
    try {
      expectBoltError(() => verifyCommand(signed, server.publicKey, { now: now + 30_000, replayGuard: afterRestart }), 'BOLT_ERR_WIRE_REPLAYED');
      // Another command is still accepted.
      verifyCommand(signCommand(dispatchBody(), server.privateKey), server.publicKey, { now: now + 30_000, replayGuard: afterRestart });
    } finally {
      afterRestart.close();
    }
  });

  it('signs the canonical JSON and refuses bodies it could not sign faithfully', () => {
    const body = dispatchBody({ with: { b: 1, a: [1, { d: null, c: 'x' }] } });
    expect(canonicalJson(body)).to.include('"with":{"a":[1,{"c":"x","d":null}],"b":1}');
    expectBoltError(() => signCommand({ ...dispatchBody(), with: { n: NaN } }, server.privateKey), 'BOLT_ERR_WIRE_MALFORMED');
    expectBoltError(() => signCommand({ ...dispatchBody(), sig: 'x' } as CommandBody<TaskDispatchMessage>, server.privateKey), 'BOLT_ERR_WIRE_MALFORMED');
  });
});
