import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import type { Cookie, PushRequestV1 } from 'replicache';
import {
  ReplicacheSocket,
  SyncUnavailableError,
  utf8Length,
  websocketURL,
  type ReplicacheSocketOptions,
} from '../src/sync';
import { example } from './support/examples';
import { FakeRep, SocketFactory } from './support/fakes';

const flush = () => vi.advanceTimersByTimeAsync(0);

function setup(options: Partial<ReplicacheSocketOptions> = {}, cookie: Cookie = 12) {
  const factory = new SocketFactory();
  const rep = new FakeRep(cookie);
  const warnings: string[] = [];
  const socket = new ReplicacheSocket({
    spaceID: 'list-1',
    origin: 'http://localhost:8080',
    createWebSocket: factory.create,
    random: () => 0.5,
    logger: { warn: (m: string) => void warnings.push(m) },
    ...options,
  });
  rep.puller = socket.puller;
  socket.attach(rep);
  return { factory, rep, socket, warnings };
}

type Env = ReturnType<typeof setup>;

/** Opens the current socket, lets the transport say hello, and welcomes it. */
async function connect(env: Env): Promise<void> {
  await flush();
  env.factory.current.open();
  await flush();
  expect(env.factory.current.last('hello')).toBeDefined();
  env.factory.current.receive(example('server-welcome'));
  await flush();
}

/** The first poke after a hello whose cookie (10) was older than the client's (12): it cannot chain. */
const staleHelloPoke = { type: 'poke', baseCookie: 10, body: { cookie: 14, lastMutationIDChanges: {}, patch: [] } };

function pushBody(): PushRequestV1 {
  return example('client-push').body;
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('connecting', () => {
  test('URL: same origin, ws/wss by scheme, token as query', () => {
    expect(websocketURL('http://localhost:8080', 'list-1')).toBe('ws://localhost:8080/api/replicache/websocket/list-1');
    expect(websocketURL('https://app.example', 'a_B-9', 't o/k')).toBe(
      'wss://app.example/api/replicache/websocket/a_B-9?token=t+o%2Fk',
    );
  });

  test('hello carries the cookie learned from a pull, exactly as client-hello.json', async () => {
    const env = setup({}, 12);
    await flush();
    expect(env.socket.getStatus().state).toBe('connecting');
    env.factory.current.open();
    await flush();
    expect(env.rep.pullCount).toBe(1);
    // The pull that revealed the cookie answered "nothing new": the poke after hello brings the diff.
    expect(env.rep.results[0]).toEqual({ httpRequestInfo: { httpStatusCode: 200, errorMessage: '' } });
    expect(env.factory.current.sent).toEqual([JSON.stringify(example('client-hello'))]);
  });

  test('a pull while connecting answers "nothing new" and its cookie goes into the hello', async () => {
    const env = setup({}, 12);
    await flush(); // Socket made, not open yet.
    expect(await env.socket.puller({ ...env.rep.request(), cookie: 13 }, 'c-1-s-1')).toEqual({
      httpRequestInfo: { httpStatusCode: 200, errorMessage: '' },
    });
    env.factory.current.open();
    await flush();
    expect(env.rep.pullCount).toBe(0); // The cookie was known: no pull needed to learn it.
    expect(env.factory.current.last('hello').cookie).toBe(13);
  });

  test('a new client says hello with cookie null, as client-hello-new.json', async () => {
    const env = setup({}, null);
    await flush();
    env.factory.current.open();
    await flush();
    expect(env.factory.current.frames()).toEqual([example('client-hello-new')]);
  });

  test('if no pull comes in time, hello goes with the best cookie known', async () => {
    const env = setup({ helloCookieWaitMs: 500 }, 12);
    env.rep.pull = () => new Promise(() => {}); // A pull that never reaches the puller.
    await flush();
    env.factory.current.open();
    await vi.advanceTimersByTimeAsync(499);
    expect(env.factory.current.sent).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(env.factory.current.last('hello').cookie).toBeNull();
  });

  test('welcome makes the status live with machine and region, and asks Replicache to push at once', async () => {
    const env = setup();
    await connect(env);
    expect(env.socket.getStatus()).toEqual({ state: 'live', machineID: '3d8d9e1c2b7a40', region: 'local' });
    expect(env.rep.pushCalls).toEqual([{ now: true }]);
  });

  test('status listeners hear every change; unsubscribe stops them', async () => {
    const env = setup();
    const states: string[] = [];
    const off = env.socket.subscribe((s) => states.push(s.state));
    await connect(env);
    env.factory.current.serverClose(1001);
    off();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(states).toEqual(['live', 'offline']);
  });

  test('the token comes from getToken and goes in the URL', async () => {
    const getToken = vi.fn(async () => 'secret');
    const env = setup({ getToken });
    await flush();
    expect(getToken).toHaveBeenCalledWith('connect');
    expect(env.factory.current.url).toBe('ws://localhost:8080/api/replicache/websocket/list-1?token=secret');
  });

  test('no welcome in time: the connection is abandoned and retried', async () => {
    const env = setup({ connectTimeoutMs: 1000 });
    await flush();
    env.factory.current.open();
    await vi.advanceTimersByTimeAsync(1000);
    expect(env.factory.current.closedByClient).toBeDefined();
    expect(env.socket.getStatus().state).toBe('offline');
    await vi.advanceTimersByTimeAsync(125); // attempt 0: 0.5 * 250
    expect(env.factory.sockets).toHaveLength(2);
  });

  test('frames of unknown types and bad frames are ignored', async () => {
    const env = setup();
    await connect(env);
    env.factory.current.receive({ type: 'presence', users: ['x'] });
    env.factory.current.receive('{not json');
    await flush();
    expect(env.socket.getStatus().state).toBe('live');
    expect(env.warnings.some((w) => w.includes('bad frame'))).toBe(true);
  });
});

describe('pusher', () => {
  test('sends the push as client-push.json and resolves on the matching pushed', async () => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    expect(env.factory.current.last('push')).toEqual(example('client-push'));
    env.factory.current.receive(example('server-pushed'));
    await expect(result).resolves.toEqual({ httpRequestInfo: { httpStatusCode: 200, errorMessage: '' } });
  });

  test('answers are matched by id, in any order', async () => {
    const env = setup();
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive(staleHelloPoke);
    const a = env.socket.pusher(pushBody(), 'c-1-s-3');
    const b = env.socket.puller(example('client-pull').body, 'c-1-s-4');
    await flush();
    let aDone = false;
    void a.then(() => (aDone = true));
    env.factory.current.receive(example('server-pulled'));
    await expect(b).resolves.toEqual({
      httpRequestInfo: { httpStatusCode: 200, errorMessage: '' },
      response: example('server-pulled').body,
    });
    expect(aDone).toBe(false);
    env.factory.current.receive({ type: 'pushed', id: 'someone-else' });
    await flush();
    expect(aDone).toBe(false);
    env.factory.current.receive(example('server-pushed'));
    await flush();
    expect(aDone).toBe(true);
  });

  test.each(['server-pushed-csnf', 'server-pushed-version'])('%s: the refusal is passed to Replicache', async (name) => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    env.factory.current.receive(example(name));
    await expect(result).resolves.toEqual({
      httpRequestInfo: { httpStatusCode: 200, errorMessage: '' },
      response: example(name).response,
    });
  });

  test('a retryable error fails the push so Replicache retries it', async () => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    env.factory.current.receive(example('server-error'));
    const r = await result;
    expect(r.httpRequestInfo.httpStatusCode).not.toBe(200);
    expect(r.httpRequestInfo.errorMessage).toBe('storage_unavailable: could not commit: database unreachable');
    expect(env.socket.getStatus().lastError).toBeUndefined(); // Retryable: nothing to tell the user.
  });

  test('a non-retryable error fails the push and is reported', async () => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    env.factory.current.receive({ type: 'error', id: 'c-1-s-3', code: 'client_group_mismatch', message: 'no', retryable: false });
    expect((await result).httpRequestInfo.httpStatusCode).not.toBe(200);
    expect(env.socket.getStatus().lastError).toBe('client_group_mismatch: no');
  });

  test('no answer in time: the push fails', async () => {
    const env = setup({ requestTimeoutMs: 5000 });
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    let settled = false;
    result.catch(() => {}).finally(() => (settled = true));
    await vi.advanceTimersByTimeAsync(4999);
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await expect(result).rejects.toThrow(new SyncUnavailableError('no answer within 5000 ms'));
    // A late answer finds nothing waiting and changes nothing.
    env.factory.current.receive(example('server-pushed'));
    await flush();
  });

  test('the socket dropping fails the pending push at once', async () => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    env.factory.current.serverClose(1006);
    await expect(result).rejects.toThrow(SyncUnavailableError);
    await expect(result).rejects.toThrow(/connection lost/);
  });

  test('offline: the push fails without sending anything', async () => {
    const env = setup();
    await flush(); // Socket made, not open.
    await expect(env.socket.pusher(pushBody(), 'c-1-s-3')).rejects.toThrow(/not connected/);
    expect(env.factory.current.sent).toEqual([]);
  });

  test('after a reconnect Replicache is asked to push again (it re-sends what is pending)', async () => {
    const env = setup();
    await connect(env);
    env.factory.current.serverClose(1001);
    await vi.advanceTimersByTimeAsync(125);
    await connect(env);
    expect(env.rep.pushCalls).toEqual([{ now: true }, { now: true }]);
  });
});

describe('puller', () => {
  test('a poke makes Replicache pull, and the pull is answered from the poke without a round trip', async () => {
    const env = setup({}, 12);
    await connect(env);
    const pullsBefore = env.rep.pullCount;
    env.factory.current.receive(example('server-poke'));
    await flush();
    expect(env.rep.pullCount).toBe(pullsBefore + 1);
    expect(env.rep.applied).toEqual([example('server-poke').body]);
    expect(env.rep.cookie).toBe(14);
    expect(env.factory.current.last('pull')).toBeUndefined();
  });

  test('pokes that arrive together are merged into one answer', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {}); // Replicache has not pulled yet.
    env.factory.current.receive(example('server-poke'));
    env.factory.current.receive({ type: 'poke', baseCookie: 14, body: { cookie: 15, lastMutationIDChanges: { 'c-1': 9 }, patch: [] } });
    const r = await env.socket.puller(env.rep.request(), 'c-1-s-9');
    expect(r.response).toEqual({ ...example('server-poke').body, cookie: 15, lastMutationIDChanges: { 'c-1': 9 } });
  });

  test('no poke chain from the client cookie: pull explicitly (client-pull.json), answer with the pulled body', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive({ type: 'poke', baseCookie: 13, body: { cookie: 14, lastMutationIDChanges: {}, patch: [] } });
    const result = env.socket.puller(example('client-pull').body, 'c-1-s-4');
    await flush();
    expect(env.factory.current.last('pull')).toEqual(example('client-pull'));
    env.factory.current.receive(example('server-pulled'));
    expect(await result).toEqual({
      httpRequestInfo: { httpStatusCode: 200, errorMessage: '' },
      response: example('server-pulled').body,
    });
  });

  test('the pulled answer becomes the cookie of the next hello', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive(staleHelloPoke);
    const result = env.socket.puller(example('client-pull').body, 'c-1-s-4');
    await flush();
    env.factory.current.receive(example('server-pulled'));
    await result;
    env.factory.current.serverClose(1011);
    await vi.advanceTimersByTimeAsync(125);
    env.factory.current.open();
    await flush();
    expect(env.factory.current.last('hello').cookie).toBe(14);
  });

  test('a pull for another client group (mutation recovery) goes to the server even if a poke would fit', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive(example('server-poke'));
    const body = { ...example('client-pull').body, clientGroupID: 'cg-old' };
    const result = env.socket.puller(body, 'c-1-s-7');
    await flush();
    expect(env.factory.current.last('pull')).toEqual({ type: 'pull', id: 'c-1-s-7', body });
    env.factory.current.receive({ type: 'pulled', id: 'c-1-s-7', body: { error: 'ClientStateNotFound' } });
    expect((await result).response).toEqual({ error: 'ClientStateNotFound' });
    // The recovery pull did not disturb this group's cookie.
    env.factory.current.serverClose(1001);
    await vi.advanceTimersByTimeAsync(125);
    env.factory.current.open();
    await flush();
    expect(env.factory.current.last('hello').cookie).toBe(12);
  });

  test('socket down and no usable poke: the pull fails so Replicache backs off', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.factory.current.serverClose(1006);
    await expect(env.socket.puller(env.rep.request(), 'c-1-s-5')).rejects.toThrow(SyncUnavailableError);
  });

  test('pokes received before a drop still answer a pull while offline', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive(example('server-poke'));
    env.factory.current.serverClose(1006);
    const r = await env.socket.puller(env.rep.request(), 'c-1-s-5');
    expect(r.response).toEqual(example('server-poke').body);
  });

  test('a new hello drops pokes of the old connection', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    env.factory.current.receive(example('server-poke'));
    env.factory.current.serverClose(1001);
    await vi.advanceTimersByTimeAsync(125);
    await connect(env);
    // Kept, the old poke would answer this pull; dropped, the pull waits for the new connection's first poke.
    const r = await env.socket.puller(env.rep.request(), 'c-1-s-6');
    expect(r).toEqual({ httpRequestInfo: { httpStatusCode: 200, errorMessage: '' } });
    expect(env.factory.current.last('pull')).toBeUndefined();
  });

  test('before the first poke after hello, a pull asks nothing: that poke is on its way', async () => {
    const env = setup({}, 12);
    await connect(env);
    const r = await env.socket.puller(env.rep.request(), 'c-1-s-6');
    expect(r).toEqual({ httpRequestInfo: { httpStatusCode: 200, errorMessage: '' } });
    expect(env.factory.current.last('pull')).toBeUndefined();
  });

  test('a refusal poke (server-poke-refused.json) makes the next pull ask the server, and its refusal reaches Replicache', async () => {
    const env = setup({}, 12);
    await connect(env);
    const pull = vi.fn(async () => {});
    env.rep.pull = pull;
    env.factory.current.receive(example('server-poke-refused'));
    expect(pull).toHaveBeenCalled();
    const result = env.socket.puller(env.rep.request(), 'c-1-s-7');
    await flush();
    const sent = env.factory.current.last('pull');
    expect(sent).toBeDefined();
    env.factory.current.receive({ type: 'pulled', id: sent.id, body: { error: 'ClientStateNotFound' } });
    expect(await result).toEqual({
      httpRequestInfo: { httpStatusCode: 200, errorMessage: '' },
      response: { error: 'ClientStateNotFound' },
    });
  });

  test('a client at the last cookie the server sent asks nothing (a periodic pull costs no round trip)', async () => {
    const env = setup({}, 12);
    await connect(env);
    env.factory.current.receive(example('server-poke'));
    await flush();
    expect(env.rep.cookie).toBe(14);
    const r = await env.socket.puller(env.rep.request(), 'c-1-s-9');
    expect(r).toEqual({ httpRequestInfo: { httpStatusCode: 200, errorMessage: '' } });
    expect(env.factory.current.last('pull')).toBeUndefined();
  });

  test('too many unpulled pokes: the buffer is dropped and the next pull asks the server', async () => {
    const env = setup({ maxBufferedPokes: 2 }, 12);
    await connect(env);
    env.rep.pull = vi.fn(async () => {});
    for (let c = 12; c < 15; c++) {
      env.factory.current.receive({ type: 'poke', baseCookie: c, body: { cookie: c + 1, lastMutationIDChanges: {}, patch: [] } });
    }
    env.socket.puller(env.rep.request(), 'c-1-s-8').catch(() => {});
    await flush();
    expect(env.factory.current.last('pull')).toMatchObject({ type: 'pull', id: 'c-1-s-8' });
  });
});

describe('close codes and reconnect', () => {
  async function closeWith(env: Env, code: number, reason = '') {
    env.factory.current.serverClose(code, reason);
    await flush();
  }

  test.each([1000, 1001, 1006, 1011, 4008])('%d: reconnect with growing jittered backoff', async (code) => {
    const env = setup(); // random 0.5: delays 125, 250, 500, ...
    await connect(env);
    const expected = [125, 250, 500, 1000, 2000, 4000, 5000, 5000];
    for (const [i, delay] of expected.entries()) {
      await closeWith(env, code);
      expect(env.socket.getStatus()).toMatchObject({ state: 'offline', retryInMs: delay });
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(env.factory.sockets).toHaveLength(i + 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(env.factory.sockets).toHaveLength(i + 2);
      expect(env.socket.getStatus().state).toBe('connecting');
      env.factory.current.open();
      await flush();
    }
  });

  test('a connection that lived 30 s resets the backoff', async () => {
    const env = setup();
    await connect(env);
    for (let i = 0; i < 4; i++) {
      await closeWith(env, 1006);
      await vi.advanceTimersByTimeAsync(env.socket.getStatus().retryInMs!);
      env.factory.current.open();
      await flush();
    }
    env.factory.current.receive(example('server-welcome'));
    await vi.advanceTimersByTimeAsync(30_000);
    env.factory.current.receive({ type: 'pong' });
    await closeWith(env, 1006);
    expect(env.socket.getStatus().retryInMs).toBe(125);
  });

  test('4004: reconnect at once; again in a row: back off', async () => {
    const env = setup();
    await connect(env);
    env.factory.current.serverClose(4004, 'space moved');
    expect(env.socket.getStatus()).toMatchObject({ state: 'offline', retryInMs: 0 });
    await flush();
    expect(env.factory.sockets).toHaveLength(2);
    env.factory.current.open();
    await flush();
    env.factory.current.serverClose(4004, 'space moved');
    expect(env.socket.getStatus()).toMatchObject({ state: 'offline', retryInMs: 250 });
  });

  test('4001: a fresh token, then reconnect', async () => {
    let n = 0;
    const reasons: string[] = [];
    const env = setup({
      getToken: (reason) => {
        reasons.push(reason);
        return `token-${++n}`;
      },
    });
    await connect(env);
    await closeWith(env, 4001, 'token expired');
    await flush();
    expect(reasons).toEqual(['connect', 'unauthorized']);
    expect(env.factory.current.url).toMatch(/\?token=token-2$/);
  });

  test.each([
    [4000, 'protocol error: unknown frame type (reload the page)'],
    [4003, 'no access to this space: not a member'],
  ])('%d: stop and say why', async (code, message) => {
    const env = setup();
    await connect(env);
    await closeWith(env, code, code === 4000 ? 'unknown frame type' : 'not a member');
    expect(env.socket.getStatus()).toMatchObject({ state: 'error', reason: message });
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(env.factory.sockets).toHaveLength(1);
  });

  test('4029: wait the delay named in the reason', async () => {
    const env = setup();
    await connect(env);
    await closeWith(env, 4029, 'retry after 7s');
    expect(env.socket.getStatus().retryInMs).toBe(7000);
    await vi.advanceTimersByTimeAsync(6999);
    expect(env.factory.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(env.factory.sockets).toHaveLength(2);
  });

  test('1009: reported, reconnected, and a push as large is not sent again', async () => {
    const env = setup();
    await connect(env);
    const big: PushRequestV1 = {
      ...pushBody(),
      mutations: [{ id: 9, clientID: 'c-1', name: 'createTodo', args: { id: 'big', text: 'x'.repeat(10_000), completed: false }, timestamp: 1 }],
    };
    const first = env.socket.pusher(big, 'c-1-s-10').catch((e: Error) => e);
    await flush();
    const bigBytes = utf8Length(env.factory.current.sent.at(-1)!);
    await closeWith(env, 1009, 'frame too large');
    expect(await first).toBeInstanceOf(SyncUnavailableError);
    expect(env.socket.getStatus().lastError).toBe('a change was too large for the server: frame too large');
    await vi.advanceTimersByTimeAsync(125);
    await connect(env);
    const sentBefore = env.factory.current.sent.length;
    const r = await env.socket.pusher(big, 'c-1-s-11');
    expect(r.httpRequestInfo.httpStatusCode).toBe(413);
    expect(env.factory.current.sent.length).toBe(sentBefore);
    expect(bigBytes).toBeGreaterThan(10_000);
    // Small pushes still go.
    env.socket.pusher(pushBody(), 'c-1-s-12').catch(() => {});
    await flush();
    expect(env.factory.current.last('push').id).toBe('c-1-s-12');
  });

  test('a push over maxFrameBytes is refused before sending', async () => {
    const env = setup({ maxFrameBytes: 100 });
    await connect(env);
    const r = await env.socket.pusher(pushBody(), 'c-1-s-3');
    expect(r.httpRequestInfo.httpStatusCode).toBe(413);
    expect(env.factory.current.last('push')).toBeUndefined();
    expect(env.socket.getStatus().lastError).toMatch(/larger than 100 bytes/);
  });

  test('close() stops for good and fails what is pending', async () => {
    const env = setup();
    await connect(env);
    const result = env.socket.pusher(pushBody(), 'c-1-s-3');
    await flush();
    env.socket.close();
    await expect(result).rejects.toThrow(SyncUnavailableError);
    expect(env.factory.current.closedByClient).toEqual({ code: 1000, reason: 'client closed' });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(env.factory.sockets).toHaveLength(1);
    expect(env.socket.getStatus().state).toBe('offline');
  });
});

describe('dead link detection', () => {
  test('after a quiet interval a ping (client-ping.json) is sent; a pong keeps the connection', async () => {
    const env = setup({ pingIntervalMs: 20_000, pongTimeoutMs: 5_000 });
    await connect(env);
    await vi.advanceTimersByTimeAsync(19_999);
    expect(env.factory.current.last('ping')).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(env.factory.current.sent.at(-1)).toBe(JSON.stringify(example('client-ping')));
    env.factory.current.receive(example('server-pong'));
    await vi.advanceTimersByTimeAsync(10_000);
    expect(env.factory.sockets).toHaveLength(1);
    expect(env.socket.getStatus().state).toBe('live');
  });

  test('traffic postpones the ping', async () => {
    const env = setup({ pingIntervalMs: 20_000, pongTimeoutMs: 5_000 });
    await connect(env);
    await vi.advanceTimersByTimeAsync(15_000);
    env.factory.current.receive({ type: 'pong' });
    await vi.advanceTimersByTimeAsync(19_999); // 20 s after the last frame, not after the welcome
    expect(env.factory.current.last('ping')).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(env.factory.current.last('ping')).toBeDefined();
  });

  test('no answer to a ping: close and reconnect', async () => {
    const env = setup({ pingIntervalMs: 20_000, pongTimeoutMs: 5_000 });
    await connect(env);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(env.factory.current.last('ping')).toBeDefined();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(env.factory.sockets[0]!.closedByClient).toBeDefined();
    expect(env.socket.getStatus()).toMatchObject({ state: 'offline' });
    expect(env.socket.getStatus().reason).toMatch(/no answer to ping/);
    await vi.advanceTimersByTimeAsync(125);
    expect(env.factory.sockets).toHaveLength(2);
    // The dead socket's late events change nothing.
    env.factory.sockets[0]!.receive(example('server-welcome'));
    expect(env.socket.getStatus().state).toBe('connecting');
  });
});
