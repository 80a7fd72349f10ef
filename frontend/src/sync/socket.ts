// ReplicacheSocket: a Replicache puller and pusher over one WebSocket (docs/protocol.md §2, §3, §5).
//
// Replicache stays in charge of what to send and when to retry: it re-sends every pending mutation until a
// pull shows it committed, so this transport never queues anything itself. A request the socket cannot carry
// (down, dropped, unanswered) throws SyncUnavailableError and one the server refuses (an `error` frame) returns
// a non-200 result; either way Replicache backs off and tries again. After every welcome the transport asks it
// to push at once, and every poke makes it pull at once.

import type {
  Cookie,
  PullRequest,
  PullResponseV1,
  Puller,
  PullerResult,
  PushRequest,
  Pusher,
  PusherResult,
} from 'replicache';
import {
  backoffDelay,
  closeAction,
  type BackoffOptions,
  type CloseAction,
  DEFAULT_BACKOFF_RESET_AFTER_MS,
} from './backoff';
import { jsonEqual, takePokeChain } from './pokes';
import {
  CloseCode,
  FrameError,
  isRefusalPoke,
  parseServerFrame,
  PROTOCOL_VERSION,
  type ClientFrame,
  type PokeFrame,
} from './protocol';
import { StatusStore, type ConnectionStatus, type StatusListener } from './status';

/** The parts of a Replicache instance the transport uses. `Replicache` satisfies it. */
export interface ReplicacheLike {
  readonly clientID: string;
  readonly clientGroupID: Promise<string>;
  readonly schemaVersion: string;
  pull(options?: { now?: boolean }): Promise<void>;
  push(options?: { now?: boolean }): Promise<void>;
}

/** The parts of a browser WebSocket the transport uses. */
export type WebSocketLike = Pick<
  WebSocket,
  'readyState' | 'onopen' | 'onmessage' | 'onclose' | 'onerror' | 'send' | 'close'
>;

/** Why `getToken` is called: before a connection, or after the server closed with 4001 (token refused). */
export type TokenReason = 'connect' | 'unauthorized';

export const DEFAULT_PING_INTERVAL_MS = 20_000;
export const DEFAULT_PONG_TIMEOUT_MS = 10_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_HELLO_COOKIE_WAIT_MS = 2_000;
/** The server's default frame limit (docs/protocol.md §2). */
export const DEFAULT_MAX_FRAME_BYTES = 4 << 20;
export const DEFAULT_MAX_BUFFERED_POKES = 1_000;
/** The path of the WebSocket endpoint; the space ID follows it. */
export const WEBSOCKET_PATH = '/api/replicache/websocket/';

export interface ReplicacheSocketOptions {
  /** The space to connect to (1 to 64 of `[A-Za-z0-9_-]`). */
  spaceID: string;
  /**
   * Origin of the API, `http(s)://host[:port]` or `ws(s)://…`. Default: the page's origin, so the socket uses
   * `wss:` on an https page and `ws:` on an http page.
   */
  origin?: string;
  /**
   * Returns the auth token sent as `?token=`; none when it returns null/undefined. Default: no token. Called
   * before every connection attempt; `reason` is `unauthorized` after the server refused the last token (4001),
   * when a cached token should be refreshed.
   */
  getToken?: (reason: TokenReason) => string | null | undefined | Promise<string | null | undefined>;
  /** Makes the WebSocket. Default: `new WebSocket(url)`. Tests pass a fake. */
  createWebSocket?: (url: string) => WebSocketLike;
  /** A `ping` is sent after this long without any frame from the server. Default {@link DEFAULT_PING_INTERVAL_MS}. */
  pingIntervalMs?: number;
  /** No frame this long after a `ping`: the link is dead; reconnect. Default {@link DEFAULT_PONG_TIMEOUT_MS}. */
  pongTimeoutMs?: number;
  /** No `welcome` this long after starting a connection: give up on it. Default {@link DEFAULT_CONNECT_TIMEOUT_MS}. */
  connectTimeoutMs?: number;
  /** A push or pull unanswered this long fails (Replicache retries). Default {@link DEFAULT_REQUEST_TIMEOUT_MS}. */
  requestTimeoutMs?: number;
  /**
   * On the first connection the transport asks Replicache to pull, to learn the client's cookie for `hello`;
   * it waits this long for that pull before saying hello with the best cookie it knows (null at worst, which
   * costs a full resync, never correctness). Default {@link DEFAULT_HELLO_COOKIE_WAIT_MS}.
   */
  helloCookieWaitMs?: number;
  /**
   * A push frame larger than this (UTF-8 bytes) is not sent: the server would close the connection with 1009.
   * Lowered automatically after a 1009. Default {@link DEFAULT_MAX_FRAME_BYTES}.
   */
  maxFrameBytes?: number;
  /**
   * Pokes kept while Replicache has not pulled them (a hidden tab pulls late). Past this, the buffer is dropped
   * and the next pull asks the server explicitly. Default {@link DEFAULT_MAX_BUFFERED_POKES}.
   */
  maxBufferedPokes?: number;
  /** Reconnect backoff; see {@link BackoffOptions} for the defaults. */
  backoff?: BackoffOptions;
  /** Random source in [0, 1) for the backoff jitter. Default `Math.random`. */
  random?: () => number;
  /** Where warnings go. Default `console`. */
  logger?: Pick<Console, 'warn'>;
}

interface Pending {
  kind: 'push' | 'pull';
  conn: Conn;
  /** Resolves the request with an answer, or rejects it with an error. */
  settle(result: PullerResult | PusherResult | SyncUnavailableError): void;
}

/** One WebSocket and what belongs to it; events of a replaced connection are ignored by identity. */
interface Conn {
  ws: WebSocketLike;
  helloSent: boolean;
  welcomedAt?: number;
  lastReceivedAt: number;
  pingSentAt?: number;
  largestSentBytes: number;
  /** The cookie of the last poke or pulled (for this client group) received on this connection. */
  serverCookie: Cookie;
  serverCookieKnown: boolean;
  /** The server refused this session (its first poke carried a refusal): pulls must ask the server. */
  refused?: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

/** WebSocket.OPEN, spelled out: the WebSocket global is missing outside browsers (Node 20). */
const OPEN = 1;

const OK = Object.freeze({ httpStatusCode: 200, errorMessage: '' });

/**
 * Thrown by the puller and pusher when the socket cannot carry the request (down, dropped, unanswered).
 * Replicache treats a throw like a failed request, backs off and retries, and logs it only at debug level,
 * where a non-200 answer would log an error on every retry while offline.
 */
export class SyncUnavailableError extends Error {
  override name = 'SyncUnavailableError';
}

function failure(httpStatusCode: number, errorMessage: string): PullerResult & PusherResult {
  return { httpRequestInfo: { httpStatusCode, errorMessage } };
}

/** Builds the WebSocket URL of a space: ws/wss by the origin's scheme, `?token=` when there is a token. */
export function websocketURL(origin: string, spaceID: string, token?: string | null): string {
  const url = new URL(WEBSOCKET_PATH + encodeURIComponent(spaceID), origin);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  if (token) url.searchParams.set('token', token);
  return url.toString();
}

/** The UTF-8 length of a string, without encoding it. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

function describeClose(code: number, reason: string): string {
  const names: Record<number, string> = {
    [CloseCode.Normal]: 'closed by the server',
    [CloseCode.GoingAway]: 'server going away',
    [CloseCode.Abnormal]: 'connection lost',
    [CloseCode.TooLarge]: 'frame too large',
    [CloseCode.InternalError]: 'server error',
    [CloseCode.Unauthorized]: 'unauthorized',
    [CloseCode.Moved]: 'space moved',
    [CloseCode.TooSlow]: 'connection too slow',
    [CloseCode.RateLimited]: 'rate limited',
  };
  const name = names[code] ?? `closed with code ${code}`;
  return reason ? `${name} (${code}: ${reason})` : `${name} (${code})`;
}

/**
 * Gives Replicache a `puller` and a `pusher` over one WebSocket to `/api/replicache/websocket/{spaceID}`, keeps
 * that socket up (ping, reconnect with backoff, close-code rules) and publishes a {@link ConnectionStatus}.
 *
 * ```ts
 * const socket = new ReplicacheSocket({ spaceID });
 * const rep = new Replicache({ name, mutators, puller: socket.puller, pusher: socket.pusher });
 * socket.attach(rep);           // connects
 * socket.subscribe(s => ...);   // connection status for the UI
 * // later: socket.close(); await rep.close();
 * ```
 */
export class ReplicacheSocket {
  /** Answers Replicache's pulls from buffered pokes when they chain from its cookie, else pulls over the socket. */
  readonly puller: Puller = (req, requestID) => this.#pull(req, requestID);
  /** Sends Replicache's pushes over the socket; resolves when the server acknowledges them as committed. */
  readonly pusher: Pusher = (req, requestID) => this.#push(req, requestID);

  readonly #spaceID: string;
  readonly #origin: string;
  readonly #getToken: ReplicacheSocketOptions['getToken'];
  readonly #createWebSocket: (url: string) => WebSocketLike;
  readonly #pingIntervalMs: number;
  readonly #pongTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #requestTimeoutMs: number;
  readonly #helloCookieWaitMs: number;
  readonly #maxBufferedPokes: number;
  readonly #backoff: BackoffOptions;
  readonly #random: () => number;
  readonly #logger: Pick<Console, 'warn'>;
  readonly #status = new StatusStore({ state: 'connecting' });

  #rep: ReplicacheLike | undefined;
  #conn: Conn | undefined;
  /** Counts connection starts, so a start that awaited (a token) can tell it was superseded. */
  #epoch = 0;
  #closed = false;
  #stopped = false;
  #attempt = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #tokenReason: TokenReason = 'connect';
  #maxFrameBytes: number;
  #pokes: PokeFrame[] = [];
  /** The best known cookie of this client, for `hello`: from the last pull request or the last answer given. */
  #cookie: Cookie = null;
  #cookieKnown = false;
  /** Set while the first `hello` waits for a pull to reveal the cookie. */
  #cookieCaptured: (() => void) | undefined;
  readonly #pending = new Map<string, Pending>();
  #requestSeq = 0;

  constructor(options: ReplicacheSocketOptions) {
    this.#spaceID = options.spaceID;
    const origin = options.origin ?? globalThis.location?.origin;
    if (!origin) throw new Error('ReplicacheSocket: no origin given and no page location to take it from');
    this.#origin = origin;
    this.#getToken = options.getToken;
    this.#createWebSocket = options.createWebSocket ?? ((url) => new WebSocket(url));
    this.#pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.#pongTimeoutMs = options.pongTimeoutMs ?? DEFAULT_PONG_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#helloCookieWaitMs = options.helloCookieWaitMs ?? DEFAULT_HELLO_COOKIE_WAIT_MS;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#maxBufferedPokes = options.maxBufferedPokes ?? DEFAULT_MAX_BUFFERED_POKES;
    this.#backoff = options.backoff ?? {};
    this.#random = options.random ?? Math.random;
    this.#logger = options.logger ?? console;
  }

  /** Connects the transport to the Replicache instance built with its puller and pusher, and starts the socket. */
  attach(rep: ReplicacheLike): void {
    if (this.#rep) throw new Error('ReplicacheSocket: already attached');
    if (this.#closed) throw new Error('ReplicacheSocket: closed');
    this.#rep = rep;
    globalThis.addEventListener?.('online', this.#onBrowserOnline);
    globalThis.addEventListener?.('offline', this.#onBrowserOffline);
    void this.#connect();
  }

  /** The current connection status. The same object until something changes. */
  getStatus(): ConnectionStatus {
    return this.#status.get();
  }

  /** Calls `listener` on every status change; returns the unsubscribe function. */
  subscribe(listener: StatusListener): () => void {
    return this.#status.subscribe(listener);
  }

  /** Closes the socket for good. Pending requests fail (Replicache keeps their mutations). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#epoch++;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    globalThis.removeEventListener?.('online', this.#onBrowserOnline);
    globalThis.removeEventListener?.('offline', this.#onBrowserOffline);
    const conn = this.#conn;
    if (conn) {
      this.#teardown(conn, 'transport closed');
      try {
        conn.ws.close(CloseCode.Normal, 'client closed');
      } catch {
        // Already closing.
      }
    }
    this.#status.update({ state: 'offline', reason: 'closed', retryInMs: undefined });
  }

  // ---- connection lifecycle ----

  async #connect(): Promise<void> {
    this.#retryTimer = undefined;
    if (this.#closed || this.#stopped) return;
    const epoch = ++this.#epoch;
    this.#status.update({ state: 'connecting', reason: undefined, retryInMs: undefined });
    let token: string | null | undefined;
    try {
      token = await this.#getToken?.(this.#tokenReason);
    } catch (e) {
      if (epoch !== this.#epoch) return;
      this.#scheduleReconnect({ kind: 'backoff' }, `could not get a token: ${(e as Error).message}`);
      return;
    }
    if (epoch !== this.#epoch) return;
    this.#tokenReason = 'connect';
    let ws: WebSocketLike;
    try {
      ws = this.#createWebSocket(websocketURL(this.#origin, this.#spaceID, token));
    } catch (e) {
      this.#scheduleReconnect({ kind: 'backoff' }, `could not open a WebSocket: ${(e as Error).message}`);
      return;
    }
    const conn: Conn = {
      ws,
      helloSent: false,
      lastReceivedAt: Date.now(),
      largestSentBytes: 0,
      serverCookie: null,
      serverCookieKnown: false,
    };
    this.#conn = conn;
    ws.onopen = () => void this.#onOpen(conn);
    ws.onmessage = (ev) => this.#onMessage(conn, ev.data);
    ws.onclose = (ev) => this.#onClose(conn, ev.code, ev.reason);
    ws.onerror = () => {}; // A close event follows every error; it carries what we need.
    conn.timer = setTimeout(() => this.#abandon(conn, 'no welcome in time'), this.#connectTimeoutMs);
  }

  async #onOpen(conn: Conn): Promise<void> {
    const rep = this.#rep!;
    let clientGroupID: string;
    try {
      clientGroupID = await rep.clientGroupID;
    } catch (e) {
      this.#abandon(conn, `no client group: ${(e as Error).message}`);
      return;
    }
    if (conn !== this.#conn) return;
    if (!this.#cookieKnown) await this.#learnCookie();
    if (conn !== this.#conn) return;
    // Pokes of an earlier connection are superseded by the diff this hello asks for.
    this.#pokes = [];
    conn.helloSent = true;
    this.#send(conn, {
      type: 'hello',
      clientGroupID,
      clientID: rep.clientID,
      cookie: this.#cookie,
      schemaVersion: rep.schemaVersion,
    });
  }

  /** Asks Replicache to pull, so the puller sees the client's cookie; bounded by helloCookieWaitMs. */
  #learnCookie(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.#cookieCaptured === done) this.#cookieCaptured = undefined;
        resolve();
      };
      const timer = setTimeout(done, this.#helloCookieWaitMs);
      this.#cookieCaptured = done;
      this.#rep!.pull({ now: true }).catch(() => {});
    });
  }

  #onMessage(conn: Conn, data: unknown): void {
    if (conn !== this.#conn) return;
    conn.lastReceivedAt = Date.now();
    if (typeof data !== 'string') {
      this.#logger.warn('spaceport: ignoring a binary frame');
      return;
    }
    let frame;
    try {
      frame = parseServerFrame(data);
    } catch (e) {
      if (!(e instanceof FrameError)) throw e;
      this.#logger.warn(`spaceport: ignoring a bad frame: ${e.message}`);
      return;
    }
    if (frame === undefined) return; // A frame type newer than this client.
    switch (frame.type) {
      case 'welcome':
        if (frame.protocol !== PROTOCOL_VERSION) {
          this.#logger.warn(`spaceport: server speaks protocol ${frame.protocol}, this client ${PROTOCOL_VERSION}`);
        }
        conn.welcomedAt = Date.now();
        clearTimeout(conn.timer);
        this.#armPing(conn, this.#pingIntervalMs);
        this.#status.update({
          state: 'live',
          reason: undefined,
          retryInMs: undefined,
          machineID: frame.machineID,
          region: frame.region,
        });
        // Mutations made while offline wait in Replicache's push backoff; send them now.
        this.#rep!.push({ now: true }).catch(() => {});
        break;
      case 'poke':
        if (isRefusalPoke(frame)) {
          // No state will come on this connection: the next pull goes to the server, whose answer (the same
          // refusal) Replicache handles.
          conn.refused = true;
          this.#rep!.pull({ now: true }).catch(() => {});
          break;
        }
        conn.serverCookie = frame.body.cookie;
        conn.serverCookieKnown = true;
        this.#pokes.push(frame);
        if (this.#pokes.length > this.#maxBufferedPokes) this.#pokes = [];
        this.#rep!.pull({ now: true }).catch(() => {});
        break;
      case 'pushed':
        this.#answer(frame.id, 'push', { httpRequestInfo: OK, ...(frame.response && { response: frame.response }) });
        break;
      case 'pulled':
        this.#answer(frame.id, 'pull', { httpRequestInfo: OK, response: frame.body });
        break;
      case 'error': {
        const text = `${frame.code}: ${frame.message}`;
        if (frame.id !== undefined) this.#answer(frame.id, undefined, failure(frame.retryable ? 503 : 400, text));
        if (!frame.retryable) this.#report(text);
        break;
      }
      case 'pong':
        break;
    }
  }

  #onClose(conn: Conn, code: number, reason: string): void {
    if (conn !== this.#conn) return;
    const why = describeClose(code, reason);
    this.#teardown(conn, why);
    if (this.#closed) return;
    if (conn.welcomedAt !== undefined) {
      const resetAfter = this.#backoff.resetAfterMs ?? DEFAULT_BACKOFF_RESET_AFTER_MS;
      if (Date.now() - conn.welcomedAt >= resetAfter) this.#attempt = 0;
    }
    const action = closeAction(code, reason);
    if (action.kind === 'report') {
      // The largest frame of that connection is the likely culprit: do not send its like again.
      if (conn.largestSentBytes > 0) this.#maxFrameBytes = Math.min(this.#maxFrameBytes, conn.largestSentBytes - 1);
      this.#report(action.message);
    }
    this.#scheduleReconnect(action, why);
  }

  /** Gives up on a connection that shows no sign of life, without waiting for a close handshake that may never come. */
  #abandon(conn: Conn, why: string): void {
    if (conn !== this.#conn) return;
    try {
      conn.ws.close(CloseCode.Normal, why);
    } catch {
      // Already closing.
    }
    this.#onClose(conn, CloseCode.Abnormal, why);
  }

  #teardown(conn: Conn, why: string): void {
    clearTimeout(conn.timer);
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = conn.ws.onerror = null;
    if (this.#conn === conn) this.#conn = undefined;
    if (this.#cookieCaptured) this.#cookieCaptured();
    for (const p of [...this.#pending.values()]) {
      if (p.conn === conn) p.settle(new SyncUnavailableError(`connection lost: ${why}`));
    }
  }

  #scheduleReconnect(action: CloseAction, why: string): void {
    let delay: number;
    switch (action.kind) {
      case 'stop':
        this.#stopped = true;
        globalThis.removeEventListener?.('online', this.#onBrowserOnline);
        globalThis.removeEventListener?.('offline', this.#onBrowserOffline);
        this.#status.update({ state: 'error', reason: action.message, retryInMs: undefined });
        return;
      case 'reauth':
      case 'immediate':
        if (action.kind === 'reauth') this.#tokenReason = 'unauthorized';
        // At once the first time; if it keeps happening (a stale route), back off like any failure.
        delay = this.#attempt === 0 ? 0 : backoffDelay(this.#attempt, this.#random, this.#backoff);
        break;
      case 'wait':
        delay = action.delayMs;
        break;
      case 'backoff':
      case 'report':
        delay = backoffDelay(this.#attempt, this.#random, this.#backoff);
        break;
    }
    this.#attempt++;
    this.#status.update({ state: 'offline', reason: why, retryInMs: delay });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => void this.#connect(), delay);
  }

  /**
   * The browser says the network is gone: drop the connection at once rather than show "live" until the ping
   * times out (an open WebSocket may sit silently through an outage); the reconnect waits for `online`.
   */
  readonly #onBrowserOffline = (): void => {
    const conn = this.#conn;
    if (conn) this.#abandon(conn, 'browser offline');
  };

  /** The browser says the network is back: skip the rest of the backoff wait. */
  readonly #onBrowserOnline = (): void => {
    if (this.#retryTimer === undefined || this.#closed || this.#stopped) return;
    clearTimeout(this.#retryTimer);
    void this.#connect();
  };

  // ---- liveness ----

  #armPing(conn: Conn, delay: number): void {
    clearTimeout(conn.timer);
    conn.timer = setTimeout(() => this.#pingTick(conn), Math.max(delay, 0));
  }

  #pingTick(conn: Conn): void {
    if (conn !== this.#conn) return;
    const now = Date.now();
    if (conn.pingSentAt !== undefined) {
      if (conn.lastReceivedAt < conn.pingSentAt) {
        this.#abandon(conn, `no answer to ping within ${this.#pongTimeoutMs} ms`);
        return;
      }
      conn.pingSentAt = undefined;
    }
    const idle = now - conn.lastReceivedAt;
    if (idle < this.#pingIntervalMs) {
      this.#armPing(conn, this.#pingIntervalMs - idle);
      return;
    }
    conn.pingSentAt = now;
    this.#send(conn, { type: 'ping' });
    this.#armPing(conn, this.#pongTimeoutMs);
  }

  // ---- requests ----

  #ready(conn: Conn | undefined): conn is Conn {
    return conn !== undefined && conn.helloSent && conn.ws.readyState === OPEN;
  }

  /** Sends a frame if the socket is open; returns the frame's UTF-8 size, or -1 when it could not be sent. */
  #send(conn: Conn, frame: ClientFrame, text = JSON.stringify(frame)): number {
    if (conn.ws.readyState !== OPEN) return -1;
    conn.ws.send(text);
    const bytes = utf8Length(text);
    conn.largestSentBytes = Math.max(conn.largestSentBytes, bytes);
    return bytes;
  }

  #answer(id: string, kind: 'push' | 'pull' | undefined, result: PullerResult | PusherResult): void {
    const p = this.#pending.get(id);
    if (!p || (kind !== undefined && p.kind !== kind)) return; // Late (timed out) or unknown: nothing waits.
    p.settle(result);
  }

  #request(conn: Conn, frame: Extract<ClientFrame, { type: 'push' | 'pull' }>): Promise<PullerResult | PusherResult> {
    // Replicache's request IDs are unique per client; the suffix only guards against a reused one.
    if (this.#pending.has(frame.id)) frame = { ...frame, id: `${frame.id}~${++this.#requestSeq}` };
    const id = frame.id;
    const text = JSON.stringify(frame);
    // A string of n UTF-16 units takes between n and 3n UTF-8 bytes: count only when it matters.
    if (frame.type === 'push' && text.length * 3 > this.#maxFrameBytes && utf8Length(text) > this.#maxFrameBytes) {
      const message = `push of ${frame.body.mutations.length} mutations is larger than ${this.#maxFrameBytes} bytes`;
      this.#report(message);
      return Promise.resolve(failure(413, message));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => settle(new SyncUnavailableError(`no answer within ${this.#requestTimeoutMs} ms`)),
        this.#requestTimeoutMs,
      );
      const settle = (result: PullerResult | PusherResult | SyncUnavailableError) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        if (result instanceof SyncUnavailableError) reject(result);
        else resolve(result);
      };
      this.#pending.set(id, { kind: frame.type, conn, settle });
      if (this.#send(conn, frame, text) < 0) settle(new SyncUnavailableError('not connected'));
    });
  }

  async #pull(req: PullRequest, requestID: string): Promise<PullerResult> {
    const rep = this.#rep;
    if (!rep) throw new SyncUnavailableError('not attached');
    // Mutation recovery pulls for other client groups (and legacy v0 pulls) go to the server as they are:
    // pokes and the hello cookie belong to this client's group only.
    const ours = req.pullVersion === 1 && req.clientGroupID === (await rep.clientGroupID);
    const conn = this.#conn;
    if (ours) {
      this.#cookie = req.cookie;
      this.#cookieKnown = true;
      if (conn && !conn.helloSent) {
        // Connecting: the cookie just learned goes into the hello, and the poke that answers the hello brings
        // the diff from it (and triggers the next pull). Nothing to ask for now.
        this.#cookieCaptured?.();
        return { httpRequestInfo: OK };
      }
      const chain = takePokeChain(this.#pokes, req.cookie);
      this.#pokes = chain.buffer;
      if (chain.response) {
        this.#cookie = chain.response.cookie;
        return { httpRequestInfo: OK, response: chain.response };
      }
      // The server pokes this connection after every commit, starting right after hello. So while that first
      // poke is on its way, or when the client already has the last cookie the server sent, there is nothing
      // to ask for: the next poke will trigger the next pull.
      if (this.#ready(conn) && !conn.refused && (!conn.serverCookieKnown || jsonEqual(conn.serverCookie, req.cookie))) {
        return { httpRequestInfo: OK };
      }
    }
    if (!this.#ready(conn)) throw new SyncUnavailableError('not connected');
    const result = (await this.#request(conn, { type: 'pull', id: requestID, body: req })) as PullerResult;
    const response = result.response as PullResponseV1 | undefined;
    if (ours && response && !('error' in response)) {
      this.#cookie = response.cookie;
      // The server moves this connection's cursor to what it answered (docs/protocol.md §3).
      if (conn === this.#conn) {
        conn.serverCookie = response.cookie;
        conn.serverCookieKnown = true;
      }
    }
    return result;
  }

  async #push(req: PushRequest, requestID: string): Promise<PusherResult> {
    const conn = this.#conn;
    if (!this.#ready(conn)) throw new SyncUnavailableError('not connected');
    return this.#request(conn, { type: 'push', id: requestID, body: req }) as Promise<PusherResult>;
  }

  #report(message: string): void {
    this.#logger.warn(`spaceport: ${message}`);
    this.#status.update({ lastError: message });
  }
}

