// Frames of the Spaceport WebSocket protocol (docs/protocol.md §2), as TypeScript types, plus a parser for
// server frames. The Go twin lives in backend/protocol; both are tested against docs/protocol-examples/*.json.

import type {
  ClientStateNotFoundResponse,
  Cookie,
  PullRequest,
  PullResponseOKV1,
  PullResponseV1,
  PushRequest,
  VersionNotSupportedResponse,
} from 'replicache';

/** The protocol version this client speaks; the server announces its own in `welcome.protocol`. */
export const PROTOCOL_VERSION = 1;

// ---- client to server ----

export interface HelloFrame {
  type: 'hello';
  clientGroupID: string;
  clientID: string;
  /** The client's current Replicache cookie; `null` for a client that has never pulled. */
  cookie: Cookie;
  schemaVersion: string;
}

export interface PushFrame {
  type: 'push';
  id: string;
  body: PushRequest;
}

export interface PullFrame {
  type: 'pull';
  id: string;
  body: PullRequest;
}

export interface PingFrame {
  type: 'ping';
}

export type ClientFrame = HelloFrame | PushFrame | PullFrame | PingFrame;

// ---- server to client ----

export interface WelcomeFrame {
  type: 'welcome';
  spaceID: string;
  machineID: string;
  region: string;
  protocol: number;
}

export interface PokeFrame {
  type: 'poke';
  /** The cookie this poke applies on top of: the cookie the server last sent this connection. */
  baseCookie: Cookie;
  body: PullResponseOKV1;
}

/**
 * The first poke of a session the server cannot serve state to (docs/protocol.md §2): its schema is not served,
 * its client group was forgotten, or its cookie is newer than the space. No pokes follow; the session's pulls get
 * the same refusal, which Replicache handles.
 */
export interface RefusalPokeFrame {
  type: 'poke';
  baseCookie: Cookie;
  body: PushRefusal;
}

/** The refusals a server may send in place of a push acknowledgement (Replicache's PushResponse). */
export type PushRefusal = ClientStateNotFoundResponse | VersionNotSupportedResponse;

export interface PushedFrame {
  type: 'pushed';
  id: string;
  response?: PushRefusal;
}

export interface PulledFrame {
  type: 'pulled';
  id: string;
  body: PullResponseV1;
}

export interface ErrorFrame {
  type: 'error';
  /** Present when the error answers a request (`push` or `pull`). */
  id?: string;
  code: string;
  message: string;
  /** True when the same request may succeed later (storage down, overloaded). */
  retryable: boolean;
}

export interface PongFrame {
  type: 'pong';
}

export type ServerFrame = WelcomeFrame | PokeFrame | RefusalPokeFrame | PushedFrame | PulledFrame | ErrorFrame | PongFrame;

// ---- close codes (docs/protocol.md §5) ----

/** WebSocket close codes with a meaning in this protocol. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  /** No close frame was received (network drop, refused upgrade, dead link): set by the browser, never sent. */
  Abnormal: 1006,
  TooLarge: 1009,
  InternalError: 1011,
  ProtocolError: 4000,
  Unauthorized: 4001,
  Forbidden: 4003,
  Moved: 4004,
  TooSlow: 4008,
  RateLimited: 4029,
} as const;

// ---- parsing ----

/** Thrown by {@link parseServerFrame} for a frame that is not valid JSON or misses a field. */
export class FrameError extends Error {
  override name = 'FrameError';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCookie(v: unknown): v is Cookie {
  if (v === null || typeof v === 'string' || typeof v === 'number') return true;
  return isObject(v) && (typeof v.order === 'string' || typeof v.order === 'number');
}

function isPullResponseOK(v: unknown): v is PullResponseOKV1 {
  return (
    isObject(v) &&
    'cookie' in v &&
    isCookie(v.cookie) &&
    isObject(v.lastMutationIDChanges) &&
    Object.values(v.lastMutationIDChanges).every((n) => typeof n === 'number') &&
    Array.isArray(v.patch) &&
    v.patch.every((op) => isObject(op) && typeof op.op === 'string')
  );
}

function isRefusal(v: unknown): v is PushRefusal {
  return isObject(v) && (v.error === 'ClientStateNotFound' || v.error === 'VersionNotSupported');
}

function need(ok: boolean, type: string, field: string): void {
  if (!ok) throw new FrameError(`${type}: missing or invalid ${field}`);
}

/**
 * Parses one text frame from the server. Returns `undefined` for a frame of a type this client does not know
 * (servers may add frame types; clients ignore them). Throws {@link FrameError} for invalid JSON or a known frame
 * with a missing or mistyped field.
 */
export function parseServerFrame(text: string): ServerFrame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FrameError(`invalid JSON: ${(e as Error).message}`);
  }
  if (!isObject(v) || typeof v.type !== 'string') throw new FrameError('frame is not an object with a type');
  const t = v.type;
  switch (t) {
    case 'welcome':
      need(typeof v.spaceID === 'string', t, 'spaceID');
      need(typeof v.machineID === 'string', t, 'machineID');
      need(typeof v.region === 'string', t, 'region');
      need(typeof v.protocol === 'number', t, 'protocol');
      return v as unknown as WelcomeFrame;
    case 'poke':
      need('baseCookie' in v && isCookie(v.baseCookie), t, 'baseCookie');
      need(isPullResponseOK(v.body) || isRefusal(v.body), t, 'body');
      return v as unknown as PokeFrame | RefusalPokeFrame;
    case 'pushed':
      need(typeof v.id === 'string', t, 'id');
      need(v.response === undefined || isRefusal(v.response), t, 'response');
      return v as unknown as PushedFrame;
    case 'pulled':
      need(typeof v.id === 'string', t, 'id');
      need(isPullResponseOK(v.body) || isRefusal(v.body), t, 'body');
      return v as unknown as PulledFrame;
    case 'error':
      need(v.id === undefined || typeof v.id === 'string', t, 'id');
      need(typeof v.code === 'string', t, 'code');
      need(typeof v.message === 'string', t, 'message');
      need(typeof v.retryable === 'boolean', t, 'retryable');
      return v as unknown as ErrorFrame;
    case 'pong':
      return { type: 'pong' };
    default:
      return undefined;
  }
}

/** Whether a poke carries a refusal instead of state. */
export function isRefusalPoke(frame: PokeFrame | RefusalPokeFrame): frame is RefusalPokeFrame {
  return 'error' in frame.body;
}
