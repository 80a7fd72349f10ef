// Reordering: moving a todo one place up or down changes its `sort`. Pure, so it is tested on its own.

import type { Todo } from '../mutators';

export interface SortChange {
  id: string;
  sort: number;
}

/**
 * The sort changes that move `todos[index]` one place (`-1` up, `+1` down) in `todos` (already in display order).
 * Usually one change: the todo takes a sort between its new neighbours, so a move is one mutation and two people
 * moving different todos at once cannot collide. When there is no number strictly between them (equal sorts,
 * or doubles exhausted by many moves into one gap), the list is renumbered 1..n in the new order.
 * Returns [] when the todo cannot move that way.
 */
export function planMove(todos: readonly Todo[], index: number, dir: -1 | 1): SortChange[] {
  const target = index + dir;
  const moving = todos[index];
  const neighbour = todos[target];
  if (!moving || !neighbour) return [];
  const beyond = todos[target + dir];
  const sort = beyond === undefined ? neighbour.sort + dir : (neighbour.sort + beyond.sort) / 2;
  const strictlyPast = dir < 0 ? sort < neighbour.sort : sort > neighbour.sort;
  const strictlyBefore = beyond === undefined || (dir < 0 ? sort > beyond.sort : sort < beyond.sort);
  if (strictlyPast && strictlyBefore && Number.isFinite(sort)) return [{ id: moving.id, sort }];

  const order = [...todos];
  order[index] = neighbour;
  order[target] = moving;
  return order.map((t, i) => ({ id: t.id, sort: i + 1 })).filter((c, i) => order[i]!.sort !== c.sort);
}
