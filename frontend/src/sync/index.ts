// Spaceport's WebSocket transport for Replicache 15. Self-contained: copy this folder into another app.
// See README.md beside this file.

export { ReplicacheSocket, SyncUnavailableError, websocketURL, utf8Length, WEBSOCKET_PATH } from './socket';
export type { ReplicacheLike, ReplicacheSocketOptions, TokenReason, WebSocketLike } from './socket';
export {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HELLO_COOKIE_WAIT_MS,
  DEFAULT_MAX_BUFFERED_POKES,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PONG_TIMEOUT_MS,
  DEFAULT_REQUEST_TIMEOUT_MS,
} from './socket';
export type { ConnectionState, ConnectionStatus, StatusListener } from './status';
export { backoffDelay, closeAction, parseRetryAfter } from './backoff';
export type { BackoffOptions, CloseAction } from './backoff';
export { takePokeChain, compareCookies, jsonEqual } from './pokes';
export type { PokeChain } from './pokes';
export { CloseCode, FrameError, parseServerFrame, PROTOCOL_VERSION } from './protocol';
export type * from './protocol';
