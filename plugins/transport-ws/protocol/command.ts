/**
 * Signed commands: what makes a client run something (task.dispatch) or stop it (task.cancel).
 *
 * The server signs each command ONCE with its static Ed25519 key, over the canonical JSON of every
 * field but `sig` (type, id, expiresAt and all the rest), so a broadcast to 1,000 clients costs one
 * signature, and no relay or broker in between can forge or alter one. The session MAC (session.ts)
 * is a second, independent check per connection.
 *
 * A client acts on a command only if it verifies with the PINNED server key, has not expired on
 * the server's clock, and its id has never been accepted before (replay-guard.ts, persisted).
 */

import { sign, verify, type KeyObject } from 'node:crypto';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import type { TaskCancelMessage, TaskDispatchMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { canonicalJson } from './canonical-json.ts';
import type { ReplayGuard } from './replay-guard.ts';

/** The messages that carry a server signature. */
export type SignedCommand = TaskDispatchMessage | TaskCancelMessage;

/** A command before signing: everything but `sig`. */
export type CommandBody<T extends SignedCommand = SignedCommand> = Omit<T, 'sig'>;

/**
 * Domain label in front of every signed command. Handshake signatures use other labels, so a
 * transcript the server signed can never pass as a command, nor the other way round.
 */
const COMMAND_LABEL = Buffer.from('bolt/1 command\n');

/** Longest lifetime a client accepts for a command by default (it bounds the replay guard). */
export const DEFAULT_MAX_COMMAND_LIFETIME_MS = 24 * 3600 * 1000;

const SIGNATURE_BASE64 = /^[A-Za-z0-9+/]{86}==$/;

/** The exact bytes a command's signature covers. */
export function commandSigningBytes(body: CommandBody): Buffer {
  return Buffer.concat([COMMAND_LABEL, Buffer.from(canonicalJson(body), 'utf8')]);
}

/**
 * Signs a command body with the server's private key and returns the command with `sig`.
 * Throws BOLT_ERR_WIRE_MALFORMED if the body already has a `sig`, lacks an id or a finite
 * expiresAt, or holds a value canonical JSON refuses.
 */
export function signCommand(body: CommandBody<TaskDispatchMessage>, serverKey: KeyObject): TaskDispatchMessage;
export function signCommand(body: CommandBody<TaskCancelMessage>, serverKey: KeyObject): TaskCancelMessage;
export function signCommand(body: CommandBody, serverKey: KeyObject): SignedCommand {
  if (Object.hasOwn(body, 'sig')) throw new BoltError('BOLT_ERR_WIRE_MALFORMED', 'Command body already carries a sig.');
  if (typeof body.id !== 'string' || body.id.length === 0) throw new BoltError('BOLT_ERR_WIRE_MALFORMED', 'Command body has no id.');
  if (!Number.isFinite(body.expiresAt)) throw new BoltError('BOLT_ERR_WIRE_MALFORMED', 'Command body has no finite expiresAt.');
  const sig = sign(null, commandSigningBytes(body), serverKey).toString('base64');
  return { ...body, sig } as SignedCommand;
}

export interface VerifyCommandOptions {
  /** Now, on the server's clock (the client's clock plus its estimated offset). */
  now: number;
  /** Where accepted ids are recorded; the id is recorded (fsync'd) before this function returns. */
  replayGuard: ReplayGuard;
  /** Commands expiring later than now + this are refused. Default 24 h. */
  maxLifetimeMs?: number;
}

/**
 * Checks a command received from the wire (after the decoder validated its schema) and records its
 * id. Returns it only if every check passes, in this order:
 * a signature is present (BOLT_ERR_WIRE_UNSIGNED), it verifies with the pinned server key over
 * the canonical body (BOLT_ERR_WIRE_BAD_SIGNATURE), it has not expired
 * (BOLT_ERR_WIRE_EXPIRED), its expiry is not implausibly far (BOLT_ERR_WIRE_EXPIRY_TOO_FAR), and
 * its id was never accepted before (BOLT_ERR_WIRE_REPLAYED). Only commands that passed the
 * signature check reach the replay guard, so nobody but the server can fill it.
 */
export function verifyCommand<T extends SignedCommand>(command: T, pinnedServerPublicKey: KeyObject, options: VerifyCommandOptions): T {
  // Typed as signed, but checked as if anything could be missing: this is the last gate.
  const { sig, ...body } = command as CommandBody & { sig?: unknown };
  const id = String(body.id).slice(0, 64);
  if (sig === undefined || sig === null || sig === '') {
    throw new BoltError('BOLT_ERR_WIRE_UNSIGNED', `Command ${id} carries no signature.`, { details: { id } });
  }
  const ok = typeof sig === 'string' && SIGNATURE_BASE64.test(sig) && verify(null, commandSigningBytes(body), pinnedServerPublicKey, Buffer.from(sig, 'base64'));
  if (!ok) throw new BoltError('BOLT_ERR_WIRE_BAD_SIGNATURE', `Command ${id} does not verify with the pinned server key.`, { details: { id } });
  const maxLifetime = options.maxLifetimeMs ?? DEFAULT_MAX_COMMAND_LIFETIME_MS;
  if (!(body.expiresAt > options.now)) {
    throw new BoltError('BOLT_ERR_WIRE_EXPIRED', `Command ${body.id} expired ${Math.round(options.now - body.expiresAt)} ms ago (server clock).`, {
      details: { id: body.id, expiresAt: body.expiresAt, now: options.now },
    });
  }
  if (body.expiresAt > options.now + maxLifetime) {
    throw new BoltError('BOLT_ERR_WIRE_EXPIRY_TOO_FAR', `Command ${body.id} expires ${Math.round(body.expiresAt - options.now)} ms from now; at most ${maxLifetime} is accepted.`, {
      details: { id: body.id, expiresAt: body.expiresAt, now: options.now },
    });
  }
  options.replayGuard.remember(body.id, body.expiresAt);
  return command;
}
