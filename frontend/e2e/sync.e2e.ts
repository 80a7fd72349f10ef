// End-to-end: real chromium pages against the real local stack (scripts/dev: Postgres, flylocal, the router and
// three backend machines). Each test works on a list of its own.

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, test } from 'vitest';
import type { Browser } from 'playwright-core';
import {
  createList,
  launchBrowser,
  newListID,
  RECONNECT_TIMEOUT_MS,
  Session,
  SYNC_TIMEOUT_MS,
  until,
} from './harness';
import { processesOf } from './stacklog';

const stack = inject('stack');
let browser: Browser;
let session: Session;

beforeAll(async () => {
  browser = await launchBrowser();
});
afterAll(async () => {
  await browser?.close();
});
beforeEach(() => {
  session = new Session(browser, stack.baseURL);
});
afterEach(async (ctx) => {
  await session.finish(ctx.task.name, ctx.task.result?.state === 'fail');
});

describe('two pages on one list', () => {
  test('see each other’s new, edited and deleted todos', async () => {
    const { id } = await createList(stack.baseURL, newListID('collab'));
    const a = await session.open('a', id);
    const b = await session.open('b', id);
    expect(await a.testId('todos-empty').isVisible()).toBe(true);

    await a.addTodo('buy milk');
    await b.waitTodos(['buy milk']);
    await b.addTodo('walk the dog');
    await a.waitTodos(['buy milk', 'walk the dog']);

    await b.editTodo('buy milk', 'buy oat milk');
    await a.waitTodos(['buy oat milk', 'walk the dog']);
    await a.setCompleted('walk the dog', true);
    await b.waitCompleted('walk the dog', true);

    await a.deleteTodo('buy oat milk');
    await b.waitTodos(['walk the dog']);
    await b.deleteTodo('walk the dog');
    await a.waitTodos([]);
    await until('a to show the empty list', () => a.testId('todos-empty').isVisible(), (v) => v);
  });

  test('both press +1 fifty times at once and both end at 100', async () => {
    const { id } = await createList(stack.baseURL, newListID('counter'));
    const a = await session.open('a', id);
    const b = await session.open('b', id);

    await Promise.all([a.increment(50), b.increment(50)]);
    await a.waitCounter(100);
    await b.waitCounter(100);
    // A page with no local state shows what the server holds: no increment lost, none applied twice.
    const c = await session.open('c', id);
    await c.waitCounter(100);
  });

  test('a page offline keeps working and its todos reach the other page when it is back', async () => {
    const { id } = await createList(stack.baseURL, newListID('offline'));
    const link = await session.link();
    const a = await session.open('a', id, { origin: link.origin });
    const b = await session.open('b', id);
    await b.addTodo('shared before');
    await a.waitTodos(['shared before']);
    expect(link.relayed).toBeGreaterThan(0);

    // Offline as a lost network is: the browser says so (navigator.onLine is false, new connections fail with
    // ERR_INTERNET_DISCONNECTED) and the open WebSocket is cut. Chromium's offline emulation alone would keep the
    // open socket, holding its frames, with the page still "live" (see link.ts).
    const closedBefore = a.wsClosed;
    await a.context.setOffline(true);
    link.cut();
    await a.waitState('offline');
    await until('a\'s WebSocket to close', async () => a.wsClosed, (n) => n > closedBefore);
    expect(await a.page.evaluate(() => navigator.onLine)).toBe(false);

    await a.addTodo('offline one');
    await a.addTodo('offline two');
    await a.editTodo('shared before', 'shared, edited offline');
    await a.waitTodos(['shared, edited offline', 'offline one', 'offline two']);
    await b.addTodo('from b meanwhile');
    await b.waitTodos(['shared before', 'from b meanwhile']);
    // Still cut off (between retries, or in one that cannot get through): nothing of a's reached the server, so
    // b cannot have it.
    expect(['offline', 'connecting']).toContain(await a.state());
    expect(await b.todoTexts()).toEqual(['shared before', 'from b meanwhile']);
    const relayedOffline = link.relayed;

    link.restore();
    await a.context.setOffline(false);
    await a.waitState('live');
    expect(link.relayed).toBeGreaterThan(relayedOffline); // it came back over the link, by itself
    // The server ran a's offline mutations after b's todo: same list, same order on both pages.
    const merged = ['shared, edited offline', 'from b meanwhile', 'offline one', 'offline two'];
    await b.waitTodos(merged);
    await a.waitTodos(merged);
  });

  test('SIGKILL of the machine that owns the list loses no acknowledged todo; pages reconnect and go on', async () => {
    const list = await createList(stack.baseURL, newListID('crash'));
    const a = await session.open('a', list.id);
    const b = await session.open('b', list.id);
    const machine = await a.machineID();
    expect(machine).toBe(list.machine);
    expect(await b.machineID()).toBe(machine);

    const procs = processesOf(stack.logPath, machine);
    expect(procs.length).toBeGreaterThan(0);
    const victim = procs.at(-1)!;
    expect(victim.app).toBe('spaceport-backend');
    expect(() => process.kill(victim.pid, 0)).not.toThrow();

    // Acknowledged: the todo and the increments are on the other page, so the server committed them.
    await a.addTodo('saved before the crash');
    await b.increment(3);
    await b.waitTodos(['saved before the crash']);
    await a.waitCounter(3);

    const closedA = a.wsClosed;
    const closedB = b.wsClosed;
    process.kill(victim.pid, 'SIGKILL');
    await until('both pages to see their WebSocket close', async () => [a.wsClosed, b.wsClosed], ([x, y]) => x! > closedA && y! > closedB);
    const known = new Set(procs.map((p) => p.pid));
    await until(
      `flylocal to restart machine ${machine}`,
      async () => processesOf(stack.logPath, machine).filter((p) => !known.has(p.pid)),
      (p) => p.length > 0,
      RECONNECT_TIMEOUT_MS,
    );
    await a.waitState('live', RECONNECT_TIMEOUT_MS);
    await b.waitState('live', RECONNECT_TIMEOUT_MS);
    expect(await a.machineID()).toBe(machine);
    expect(await b.machineID()).toBe(machine);

    // They still collaborate.
    await b.addTodo('added after the crash');
    await a.waitTodos(['saved before the crash', 'added after the crash']);
    await a.setCompleted('saved before the crash', true);
    await b.waitCompleted('saved before the crash', true);
    await a.increment(1);
    await b.waitCounter(4);

    // A page with no local state gets everything from the restarted machine, the todo from before the kill too.
    const c = await session.open('c', list.id);
    await c.waitTodos(['saved before the crash', 'added after the crash'], SYNC_TIMEOUT_MS);
    await c.waitCompleted('saved before the crash', true);
    await c.waitCounter(4);
  });
});
