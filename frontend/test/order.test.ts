import { describe, expect, test } from 'vitest';
import { compareTodos, type Todo } from '../src/mutators';
import { planMove } from '../src/ui/order';

const list = (...sorts: number[]): Todo[] =>
  sorts.map((sort, i) => ({ id: String.fromCharCode(97 + i), text: '', completed: false, sort }));

function apply(todos: Todo[], changes: { id: string; sort: number }[]): string[] {
  const next = todos.map((t) => ({ ...t, sort: changes.find((c) => c.id === t.id)?.sort ?? t.sort }));
  return next.sort(compareTodos).map((t) => t.id);
}

describe('planMove', () => {
  test('up into the middle: one change, halfway between the new neighbours', () => {
    const todos = list(1, 2, 3, 4);
    expect(planMove(todos, 2, -1)).toEqual([{ id: 'c', sort: 1.5 }]);
    expect(apply(todos, planMove(todos, 2, -1))).toEqual(['a', 'c', 'b', 'd']);
  });

  test('down into the middle', () => {
    const todos = list(1, 2, 3, 4);
    expect(planMove(todos, 1, 1)).toEqual([{ id: 'b', sort: 3.5 }]);
  });

  test('to the top and to the bottom: one past the end', () => {
    const todos = list(1, 2, 3);
    expect(planMove(todos, 1, -1)).toEqual([{ id: 'b', sort: 0 }]);
    expect(planMove(todos, 1, 1)).toEqual([{ id: 'b', sort: 4 }]);
  });

  test('cannot move past the ends', () => {
    const todos = list(1, 2);
    expect(planMove(todos, 0, -1)).toEqual([]);
    expect(planMove(todos, 1, 1)).toEqual([]);
  });

  test('equal sorts: renumber in the new order', () => {
    const todos = list(1, 2, 2, 3);
    const changes = planMove(todos, 3, -1);
    expect(apply(todos, changes)).toEqual(['a', 'b', 'd', 'c']);
  });

  test('many moves into the same gap keep working', () => {
    let todos = list(1, 2, 3);
    for (let i = 0; i < 200; i++) {
      // Move the last todo up to second place, over and over.
      const moved = planMove(todos, 2, -1);
      expect(moved.length).toBeGreaterThan(0);
      todos = todos.map((t) => ({ ...t, sort: moved.find((c) => c.id === t.id)?.sort ?? t.sort })).sort(compareTodos);
      expect(new Set(todos.map((t) => t.sort)).size).toBe(3);
    }
  });
});
