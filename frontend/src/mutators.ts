// The todo list's mutators. Each one has a Go twin (backend/todoapp) that the server runs as the authority: the
// client runs these at once for an instant UI, the server re-runs its own in order, and its result replaces
// this one on the next poke. So for the same store and the same arguments both must write the same values, and
// both must refuse the same bad arguments (a refused mutation writes nothing; the server still counts it done).
// docs/mutator-cases.json holds the cases both are meant to pass. Only the server checks roles (a viewer
// cannot edit todos) and its key and value size limits.
//
// Data model: one space is one list.
//   todo/<id>  {"id": string, "text": string, "completed": boolean, "sort": number}
//   counter    number (any key works with increment; the app uses "counter")
//
// Numbers are IEEE-754 doubles on both sides (Go float64).

import type { ReadonlyJSONValue, WriteTransaction } from 'replicache';

/** The key prefix of todos. */
export const TODO_PREFIX = 'todo/';
/** The key of the app's shared counter. */
export const COUNTER_KEY = 'counter';

// A type, not an interface: Replicache's JSON value types need the index signature only aliases get implicitly.
export type Todo = {
  id: string;
  text: string;
  completed: boolean;
  sort: number;
};

export interface CreateTodoArgs {
  id: string;
  /** Default "". */
  text?: string;
  /** Default false. */
  completed?: boolean;
}

/** Fields left out, or null, stay as they are. */
export interface UpdateTodoArgs {
  id: string;
  text?: string | null;
  completed?: boolean | null;
  sort?: number | null;
}

export interface IncrementArgs {
  key: string;
  delta: number;
}

/** The subset of Replicache's WriteTransaction the mutators use (tests give them an in-memory one). */
export interface MutatorTx {
  get(key: string): Promise<ReadonlyJSONValue | undefined>;
  set(key: string, value: ReadonlyJSONValue): Promise<void>;
  del(key: string): Promise<boolean>;
  scan(options: { prefix: string }): { values(): AsyncIterable<ReadonlyJSONValue> };
}

/** Thrown for arguments (or stored data) the server refuses too. */
export class MutatorArgsError extends Error {
  override name = 'MutatorArgsError';
}

/** The longest todo text the server accepts, in UTF-8 bytes (Go: todoapp.MaxTodoText). */
export const MAX_TODO_TEXT_BYTES = 10_000;

export function todoKey(id: string): string {
  return TODO_PREFIX + id;
}

type FieldType = 'string' | 'boolean' | 'number';
type Decoded<S extends Record<string, FieldType>> = {
  [K in keyof S]: (S[K] extends 'string' ? string : S[K] extends 'boolean' ? boolean : number) | undefined;
};

/**
 * Reads a JSON value the way Go's json.Unmarshal fills a struct with these fields: the value must be an object
 * or null; a field that is absent or null is undefined (Go: the zero value, or a nil pointer); a field of
 * another type is an error; other fields are ignored.
 */
function decode<S extends Record<string, FieldType>>(v: unknown, spec: S, what: string): Decoded<S> {
  const out: Record<string, unknown> = {};
  if (v === null) return out as Decoded<S>;
  if (typeof v !== 'object' || Array.isArray(v)) throw new MutatorArgsError(`${what}: not an object`);
  const o = v as Record<string, unknown>;
  for (const [field, type] of Object.entries(spec)) {
    const f = o[field];
    if (f === undefined || f === null) continue;
    if (typeof f !== type) throw new MutatorArgsError(`${what}: ${field} must be a ${type}`);
    out[field] = f;
  }
  return out as Decoded<S>;
}

const TODO_FIELDS = { id: 'string', text: 'string', completed: 'boolean', sort: 'number' } as const;

/** A stored value read as Go reads it into a Todo; throws when it does not decode. */
function decodeTodo(v: ReadonlyJSONValue, what: string): Todo {
  const t = decode(v, TODO_FIELDS, what);
  return { id: t.id ?? '', text: t.text ?? '', completed: t.completed ?? false, sort: t.sort ?? 0 };
}

function utf8Bytes(s: string): number {
  return new TextEncoder().encode(s).length;
}

function checkText(text: string | undefined, mutator: string): void {
  if (text !== undefined && utf8Bytes(text) > MAX_TODO_TEXT_BYTES) {
    throw new MutatorArgsError(`${mutator}: text over ${MAX_TODO_TEXT_BYTES} bytes`);
  }
}

/**
 * Puts `todo/<id>` = {id, text, completed, sort} at the end of the list: sort is one more than the largest sort
 * of the stored todos, and never below 1 (the server starts its maximum at 0). Stored values that do not decode
 * as todos are skipped. An existing todo with that id is replaced. A missing text is "", a missing completed
 * false. Refused: args not an object, an empty id, a field of the wrong type, text over 10,000 bytes.
 */
export async function createTodo(tx: MutatorTx, args: CreateTodoArgs): Promise<void> {
  const a = decode(args, { id: 'string', text: 'string', completed: 'boolean' }, 'createTodo');
  if (!a.id) throw new MutatorArgsError('createTodo: id must be a non-empty string');
  checkText(a.text, 'createTodo');
  let max = 0;
  for await (const v of tx.scan({ prefix: TODO_PREFIX }).values()) {
    let t: Todo;
    try {
      t = decodeTodo(v, 'stored todo');
    } catch {
      continue;
    }
    if (t.sort > max) max = t.sort;
  }
  const todo: Todo = { id: a.id, text: a.text ?? '', completed: a.completed ?? false, sort: max + 1 };
  await tx.set(todoKey(a.id), todo);
}

/**
 * Sets the given fields (text, completed, sort; absent or null: unchanged) of `todo/<id>`. The stored todo is
 * rewritten as exactly {id, text, completed, sort}. Does nothing when there is no such todo. Refused: args not
 * an object, an empty id, a field of the wrong type, text over 10,000 bytes, a stored value that is no todo.
 */
export async function updateTodo(tx: MutatorTx, args: UpdateTodoArgs): Promise<void> {
  const a = decode(args, { id: 'string', text: 'string', completed: 'boolean', sort: 'number' }, 'updateTodo');
  if (!a.id) throw new MutatorArgsError('updateTodo: id must be a non-empty string');
  checkText(a.text, 'updateTodo');
  const stored = await tx.get(todoKey(a.id));
  if (stored === undefined) return;
  const t = decodeTodo(stored, `stored todo ${a.id}`);
  const next: Todo = {
    id: t.id,
    text: a.text ?? t.text,
    completed: a.completed ?? t.completed,
    sort: a.sort ?? t.sort,
  };
  await tx.set(todoKey(a.id), next);
}

/** Deletes `todo/<id>`; args is the id itself. Nothing to delete is fine. Refused: anything but a non-empty string. */
export async function deleteTodo(tx: MutatorTx, id: string): Promise<void> {
  if (typeof id !== 'string' || id === '') throw new MutatorArgsError('deleteTodo: args must be a non-empty id');
  await tx.del(todoKey(id));
}

/**
 * Adds `delta` to the number stored at `key` (0 when the key is absent or holds null) and stores the sum, as
 * IEEE-754 doubles. Refused: args not an object, an empty key, a missing delta, a field of the wrong type, a
 * stored value that is not a number, a sum that is not finite.
 */
export async function increment(tx: MutatorTx, args: IncrementArgs): Promise<void> {
  const a = decode(args, { key: 'string', delta: 'number' }, 'increment');
  if (!a.key || a.delta === undefined) throw new MutatorArgsError('increment: needs a key and a delta');
  const stored = await tx.get(a.key);
  if (stored !== undefined && stored !== null && typeof stored !== 'number') {
    throw new MutatorArgsError(`increment: ${a.key} does not hold a number`);
  }
  const sum = (stored ?? 0) + a.delta;
  if (!Number.isFinite(sum)) throw new MutatorArgsError(`increment: ${a.key} would overflow`);
  await tx.set(a.key, sum);
}

/** The mutators by name, as Replicache's `mutators` option takes them. Names and arguments are the wire format. */
export const mutators = {
  createTodo: (tx: WriteTransaction, args: CreateTodoArgs) => createTodo(tx, args),
  updateTodo: (tx: WriteTransaction, args: UpdateTodoArgs) => updateTodo(tx, args),
  deleteTodo: (tx: WriteTransaction, id: string) => deleteTodo(tx, id),
  increment: (tx: WriteTransaction, args: IncrementArgs) => increment(tx, args),
};

export type Mutators = typeof mutators;

/** Orders todos as the list shows them: by sort, then by id so equal sorts have a stable order everywhere. */
export function compareTodos(a: Todo, b: Todo): number {
  return a.sort - b.sort || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}
