// The transport with the real Replicache 15 client, against an in-memory stand-in of a backend space
// (support/memserver.ts). Checks that Replicache accepts what the puller returns (merged pokes, explicit pulls),
// that mutations are confirmed, and that nothing is lost across drops, restarts and moves.

import { afterEach, describe, expect, test, vi } from 'vitest';
import { Replicache, type ReadTransaction } from 'replicache';
import { mutators, TODO_PREFIX, type Todo } from '../src/mutators';
import { ReplicacheSocket } from '../src/sync';
import { MemSpaceServer } from './support/memserver';

const WAIT = { timeout: 5000, interval: 5 };

interface Client {
  rep: Replicache<typeof mutators>;
  socket: ReplicacheSocket;
}

const open: Client[] = [];

afterEach(async () => {
  for (const c of open.splice(0)) {
    c.socket.close();
    await c.rep.close();
  }
});

let browsers = 0;

/** A browser tab: its own Replicache (own client group: a different name) on a transport to `server`. */
function client(server: MemSpaceServer): Client {
  const socket = new ReplicacheSocket({
    spaceID: server.spaceID,
    origin: 'http://spaceport.test',
    createWebSocket: server.connect,
    random: () => 0, // Reconnect without waiting: these tests are about what arrives, not when.
    logger: { warn() {} },
  });
  const rep = new Replicache({
    name: `browser-${++browsers}-${Math.random()}`,
    kvStore: 'mem',
    schemaVersion: '1',
    mutators,
    puller: socket.puller,
    pusher: socket.pusher,
    logLevel: 'error',
    logSinks: [{ log() {} }],
  });
  rep.onUpdateNeeded = null;
  rep.onClientStateNotFound = null;
  socket.attach(rep);
  const c = { rep, socket };
  open.push(c);
  return c;
}

function todos(rep: Client['rep']): Promise<Todo[]> {
  return rep.query(async (tx: ReadTransaction) => (await tx.scan({ prefix: TODO_PREFIX }).values().toArray()) as Todo[]);
}

function counter(rep: Client['rep']): Promise<unknown> {
  return rep.query((tx) => tx.get('counter'));
}

async function live(c: Client): Promise<void> {
  await vi.waitFor(() => expect(c.socket.getStatus().state).toBe('live'), WAIT);
}

async function settled(c: Client): Promise<void> {
  await vi.waitFor(async () => expect(await c.rep.experimentalPendingMutations()).toEqual([]), WAIT);
}

describe('Replicache over ReplicacheSocket', () => {
  test('two clients converge through pokes alone, and mutations are confirmed', async () => {
    const server = new MemSpaceServer();
    const a = client(server);
    const b = client(server);
    await live(a);
    await live(b);
    expect(a.socket.getStatus()).toMatchObject({ machineID: 'mem-machine-1', region: 'mem' });

    await a.rep.mutate.createTodo({ id: 't1', text: 'Buy milk', completed: false });
    await b.rep.mutate.createTodo({ id: 't2', text: 'Walk dog', completed: false });
    for (let i = 0; i < 5; i++) await a.rep.mutate.increment({ key: 'counter', delta: 1 });
    await b.rep.mutate.increment({ key: 'counter', delta: 10 });

    await settled(a);
    await settled(b);
    const expected = server.view();
    expect(expected.counter).toBe(15);
    for (const c of [a, b]) {
      await vi.waitFor(async () => expect(await counter(c.rep)).toBe(15), WAIT);
      expect(Object.fromEntries((await todos(c.rep)).map((t) => [TODO_PREFIX + t.id, t]))).toEqual({
        'todo/t1': expected['todo/t1'],
        'todo/t2': expected['todo/t2'],
      });
    }
    // Connected clients never had to ask: every change came in a poke.
    expect(server.received.pull ?? 0).toBe(0);
  });

  test('the server result wins over the optimistic one', async () => {
    const server = new MemSpaceServer();
    const a = client(server);
    const b = client(server);
    await live(a);
    await live(b);
    // Both create "at the end" at once: optimistically both get sort 1; the server orders them 1 and 2.
    await Promise.all([
      a.rep.mutate.createTodo({ id: 'x', text: 'X', completed: false }),
      b.rep.mutate.createTodo({ id: 'y', text: 'Y', completed: false }),
    ]);
    await settled(a);
    await settled(b);
    const sorts = (await todos(a.rep)).map((t) => t.sort).sort();
    expect(sorts).toEqual([1, 2]);
    await vi.waitFor(async () => expect(await todos(b.rep)).toEqual(await todos(a.rep)), WAIT);
  });

  test('offline changes apply at once and reach the server after reconnect', async () => {
    const server = new MemSpaceServer();
    const a = client(server);
    const b = client(server);
    await live(a);
    await live(b);
    server.down = true;
    server.closeAll(1006);
    await vi.waitFor(() => expect(a.socket.getStatus().state).not.toBe('live'), WAIT);

    await a.rep.mutate.createTodo({ id: 'offline', text: 'typed offline', completed: false });
    await a.rep.mutate.increment({ key: 'counter', delta: 3 });
    expect((await todos(a.rep)).map((t) => t.id)).toEqual(['offline']);
    expect(await counter(a.rep)).toBe(3);
    expect(server.view()).toEqual({});

    server.down = false;
    await live(a);
    await settled(a);
    expect(server.view()).toMatchObject({ counter: 3, 'todo/offline': { text: 'typed offline' } });
    await vi.waitFor(async () => expect(await counter(b.rep)).toBe(3), WAIT);
  });

  test('a restart (1001) and a move (4004) lose nothing; reconnects resume from the client cookie', async () => {
    const server = new MemSpaceServer();
    const a = client(server);
    await live(a);
    await a.rep.mutate.createTodo({ id: 'one', text: '1', completed: false });
    await settled(a);
    const hellos = server.received.hello ?? 0;

    server.closeAll(1001, 'shutting down');
    await vi.waitFor(() => expect(server.received.hello).toBe(hellos + 1), WAIT);
    await live(a);
    await a.rep.mutate.updateTodo({ id: 'one', completed: true });
    await settled(a);

    server.closeAll(4004, 'moved');
    await vi.waitFor(() => expect(server.received.hello).toBe(hellos + 2), WAIT);
    await a.rep.mutate.deleteTodo('one');
    await a.rep.mutate.createTodo({ id: 'two', text: '2', completed: false });
    await settled(a);

    expect(Object.keys(server.view())).toEqual(['todo/two']);
    expect((await todos(a.rep)).map((t) => t.id)).toEqual(['two']);
    // The hello cookie matched the client's, so even reconnects needed no explicit pull.
    expect(server.received.pull ?? 0).toBe(0);
  });

  test('a client that joins later gets the whole space in its first poke', async () => {
    const server = new MemSpaceServer();
    const a = client(server);
    await live(a);
    await a.rep.mutate.createTodo({ id: 'a', text: 'A', completed: false });
    await a.rep.mutate.createTodo({ id: 'b', text: 'B', completed: false });
    await a.rep.mutate.deleteTodo('a');
    await settled(a);

    const late = client(server);
    await vi.waitFor(async () => expect((await todos(late.rep)).map((t) => t.id)).toEqual(['b']), WAIT);
  });
});
