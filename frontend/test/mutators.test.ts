import { describe, expect, test } from 'vitest';
import type { ReadonlyJSONValue } from 'replicache';
import { compareTodos, MutatorArgsError, mutators, createTodo, deleteTodo, increment, updateTodo, type Todo } from '../src/mutators';
import { example, mutatorCases } from './support/examples';
import { MemTx } from './support/memtx';

const byName = { createTodo, updateTodo, deleteTodo, increment } as Record<string, (tx: MemTx, args: never) => Promise<void>>;

interface Case {
  title: string;
  before: Record<string, ReadonlyJSONValue>;
  name: string;
  args: ReadonlyJSONValue;
  after?: Record<string, ReadonlyJSONValue>;
  refused?: boolean;
}

/** Runs one mutation the way both sides do: all of its writes, or none when it refuses. */
async function run(before: Record<string, ReadonlyJSONValue>, name: string, args: ReadonlyJSONValue) {
  const tx = new MemTx(before);
  const fn = byName[name];
  if (!fn) throw new Error(`no mutator ${name}`);
  await fn(tx, args as never);
  return tx.snapshot();
}

describe('mutators against the shared cases', () => {
  const cases: Case[] = mutatorCases().cases;

  test.each(cases.map((c) => [c.title, c] as const))('%s', async (_, c) => {
    if (c.refused) {
      await expect(run(c.before, c.name, c.args)).rejects.toThrow(MutatorArgsError);
    } else {
      expect(await run(c.before, c.name, c.args)).toEqual(c.after);
    }
  });

  test('every mutator has cases, including refusals', () => {
    for (const name of Object.keys(mutators)) {
      expect(cases.some((c) => c.name === name && !c.refused), name).toBe(true);
      expect(cases.some((c) => c.name === name && c.refused), name).toBe(true);
    }
  });
});

test('the example push names only mutators this app has, with arguments they accept', async () => {
  const push = example('client-push');
  let state: Record<string, ReadonlyJSONValue> = {};
  for (const m of push.body.mutations) {
    expect(Object.keys(mutators)).toContain(m.name);
    state = await run(state, m.name, m.args);
  }
  expect(state).toEqual({
    counter: 1,
    'todo/t1': { id: 't1', text: 'Buy milk', completed: false, sort: 1 },
  });
});

test('replaying a sequence gives the same state every time (the server re-runs the same code)', async () => {
  const steps: [string, ReadonlyJSONValue][] = [
    ['createTodo', { id: 'a', text: 'A', completed: false }],
    ['createTodo', { id: 'b', text: 'B', completed: false }],
    ['updateTodo', { id: 'a', sort: 2.5 }],
    ['increment', { key: 'counter', delta: 1 }],
    ['deleteTodo', 'b'],
    ['createTodo', { id: 'c', text: 'C', completed: true }],
  ];
  const replay = async () => {
    let s: Record<string, ReadonlyJSONValue> = {};
    for (const [n, a] of steps) s = await run(s, n, a);
    return s;
  };
  const first = await replay();
  expect(first['todo/c']).toEqual({ id: 'c', text: 'C', completed: true, sort: 3.5 });
  expect(await replay()).toEqual(first);
});

describe('compareTodos', () => {
  test('by sort, then by id', () => {
    const t = (id: string, sort: number): Todo => ({ id, text: id, completed: false, sort });
    expect([t('b', 2), t('c', 1), t('a', 2)].sort(compareTodos).map((x) => x.id)).toEqual(['c', 'a', 'b']);
  });
});
