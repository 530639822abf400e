/**
 * The security and message layer of Bolt's wire protocol, free of I/O except the host key and the
 * replay guard's file: identity, handshake, session sealing, signed commands, inbound validation
 * and clock offset estimation. A transport (WebSocket, NATS, ...) moves the strings these produce.
 */

export { canonicalJson, CANONICAL_MAX_DEPTH } from './canonical-json.ts';
export {
  decodeKeyBytes,
  exportPublicKey,
  fingerprint,
  generateIdentity,
  IDENTITY_DIR,
  importPublicKey,
  importRaw,
  loadOrCreateIdentity,
  PRIVATE_KEY_FILE,
  rawPublicKey,
  type Identity,
} from './identity.ts';
export {
  createClientHandshake,
  createServerHandshake,
  type ClientHandshakeOptions,
  type Handshake,
  type HandshakeStep,
  type ServerHandshakeOptions,
} from './handshake.ts';
export { Session, type PeerIdentity, type SessionParams, type SessionSide } from './session.ts';
export {
  commandSigningBytes,
  DEFAULT_MAX_COMMAND_LIFETIME_MS,
  signCommand,
  verifyCommand,
  type CommandBody,
  type SignedCommand,
  type VerifyCommandOptions,
} from './command.ts';
export { REPLAY_GUARD_FILE, ReplayGuard, type ReplayGuardOptions } from './replay-guard.ts';
export {
  createDecoder,
  DIRECTION_TYPES,
  GarbageMeter,
  MAX_MESSAGE_DEPTH,
  type DecodeErrorCode,
  type DecodeResult,
  type Decoder,
  type DecoderOptions,
  type DecoderStats,
  type Direction,
  type GarbageMeterOptions,
  type Handler,
} from './codec.ts';
export {
  ClockEstimator,
  localClock,
  sampleFromExchange,
  serverNow,
  type ClockEstimate,
  type ClockEstimatorOptions,
  type ClockExchange,
  type ClockSample,
} from './clock.ts';
