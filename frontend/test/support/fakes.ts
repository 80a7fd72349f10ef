// Test doubles for unit tests of the transport: a WebSocket the test drives by hand, and a stand-in for the
// parts of Replicache the transport calls (the real Replicache is exercised in replicache.test.ts).

import type { Cookie, Puller, PullerResult, PullRequestV1, PullResponseOKV1 } from 'replicache';
import type { ReplicacheLike, WebSocketLike } from '../../src/sync';
import { compareCookies } from '../../src/sync';

export class FakeWebSocket implements WebSocketLike {
  readyState = 0;
  onopen: WebSocketLike['onopen'] = null;
  onmessage: WebSocketLike['onmessage'] = null;
  onclose: WebSocketLike['onclose'] = null;
  onerror: WebSocketLike['onerror'] = null;
  readonly sent: string[] = [];
  closedByClient: { code?: number; reason?: string } | undefined;

  constructor(readonly url: string) {}

  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
    this.sent.push(String(data));
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- driven by the test ----

  open(): void {
    this.readyState = 1;
    this.onopen?.call(this as unknown as WebSocket, new Event('open'));
  }

  /** Delivers a server frame (an object is JSON-encoded; a string is sent as is). */
  receive(frame: unknown): void {
    const data = typeof frame === 'string' ? frame : JSON.stringify(frame);
    this.onmessage?.call(this as unknown as WebSocket, { data } as MessageEvent);
  }

  /** The server (or the network) closes the connection. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.call(this as unknown as WebSocket, { code, reason, wasClean: code !== 1006 } as CloseEvent);
  }

  /** The frames the client sent, parsed. */
  frames(): any[] {
    return this.sent.map((s) => JSON.parse(s));
  }

  /** The last frame the client sent of the given type. */
  last(type: string): any {
    return this.frames().filter((f) => f.type === type).at(-1);
  }
}

/** Records every socket made, so a test can reach the current one. */
export class SocketFactory {
  readonly sockets: FakeWebSocket[] = [];
  readonly create = (url: string): FakeWebSocket => {
    const ws = new FakeWebSocket(url);
    this.sockets.push(ws);
    return ws;
  };
  get current(): FakeWebSocket {
    const ws = this.sockets.at(-1);
    if (!ws) throw new Error('no socket made yet');
    return ws;
  }
}

/**
 * Stands in for Replicache: `pull()` calls the puller with its current cookie (one pull at a time, like
 * Replicache) and applies an answer whose cookie is newer; `push()` is only recorded.
 */
export class FakeRep implements ReplicacheLike {
  readonly clientID = 'c-1';
  readonly clientGroupID = Promise.resolve('cg-1');
  readonly schemaVersion = '1';
  puller: Puller | undefined;
  cookie: Cookie;
  pullCount = 0;
  readonly pushCalls: ({ now?: boolean } | undefined)[] = [];
  readonly results: PullerResult[] = [];
  readonly applied: PullResponseOKV1[] = [];
  #seq = 0;
  #chain: Promise<void> = Promise.resolve();

  constructor(cookie: Cookie = null) {
    this.cookie = cookie;
  }

  request(): PullRequestV1 {
    return { pullVersion: 1, schemaVersion: '1', profileID: 'p-1', clientGroupID: 'cg-1', cookie: this.cookie };
  }

  pull(): Promise<void> {
    this.pullCount++;
    this.#chain = this.#chain.then(async () => {
      const result = await this.puller!(this.request(), `c-1-s-${++this.#seq}`);
      this.results.push(result);
      const r = result.response;
      if (result.httpRequestInfo.httpStatusCode !== 200 || !r || 'error' in r) return;
      if (!('lastMutationIDChanges' in r) || compareCookies(r.cookie, this.cookie) <= 0) return;
      this.cookie = r.cookie;
      this.applied.push(r);
    });
    return this.#chain;
  }

  async push(options?: { now?: boolean }): Promise<void> {
    this.pushCalls.push(options);
  }
}
