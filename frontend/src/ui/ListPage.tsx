import { useCallback, useEffect, useState, type FormEvent } from 'react';
import type { ReadTransaction } from 'replicache';
import { COUNTER_KEY, compareTodos, TODO_PREFIX, type Todo } from '../mutators';
import { APIError, getSpace } from './api';
import { ConnectionBadge } from './ConnectionBadge';
import { newID } from './ids';
import { planMove } from './order';
import { Link } from './router';
import { useConnectionStatus, useQuery, useSpace } from './space';
import { TodoItem } from './TodoItem';

async function readTodos(tx: ReadTransaction): Promise<Todo[]> {
  const values = (await tx.scan({ prefix: TODO_PREFIX }).values().toArray()) as Todo[];
  return [...values].sort(compareTodos);
}

async function readCounter(tx: ReadTransaction): Promise<number> {
  const v = await tx.get(COUNTER_KEY);
  return typeof v === 'number' ? v : 0;
}

export function ListPage({ spaceID }: { spaceID: string }) {
  const [missing, setMissing] = useState(false);

  useEffect(() => {
    document.title = `${spaceID} · Spaceport`;
    // Only a definite "no such space" stops us: offline (or any other failure), the local replica still works.
    const abort = new AbortController();
    getSpace(spaceID, abort.signal).catch((e) => {
      if (e instanceof APIError && e.status === 404) setMissing(true);
    });
    return () => abort.abort();
  }, [spaceID]);

  if (missing) {
    return (
      <main className="page" data-testid="space-not-found">
        <h1>No such list</h1>
        <p>
          There is no list <code>{spaceID}</code>. <Link href="/">See all lists</Link>.
        </p>
      </main>
    );
  }
  return <OpenList spaceID={spaceID} />;
}

function OpenList({ spaceID }: { spaceID: string }) {
  const space = useSpace(spaceID);
  const rep = space?.rep;
  const status = useConnectionStatus(space?.socket);
  const todos = useQuery(rep, readTodos, [] as Todo[]);
  const counter = useQuery(rep, readCounter, 0);
  const [newText, setNewText] = useState('');
  const [moved, setMoved] = useState<{ id: string; dir: 'up' | 'down'; fromSort: number }>();
  const clearMoved = useCallback(() => setMoved(undefined), []);

  function addTodo(e: FormEvent) {
    e.preventDefault();
    const text = newText.trim();
    if (!rep || text === '') return;
    void rep.mutate.createTodo({ id: newID(), text, completed: false });
    setNewText('');
  }

  function move(index: number, dir: 'up' | 'down') {
    if (!rep) return;
    const todo = todos[index]!;
    const changes = planMove(todos, index, dir === 'up' ? -1 : 1);
    for (const c of changes) void rep.mutate.updateTodo({ id: c.id, sort: c.sort });
    if (changes.some((c) => c.id === todo.id)) setMoved({ id: todo.id, dir, fromSort: todo.sort });
  }

  const left = todos.filter((t) => !t.completed).length;
  return (
    <main className="page">
      <nav className="crumbs">
        <Link href="/" data-testid="home-link">
          ← All lists
        </Link>
      </nav>
      <header className="page-header">
        <h1>
          List <code data-testid="space-id">{spaceID}</code>
        </h1>
        <ConnectionBadge status={status} />
      </header>

      <section className="counter" aria-labelledby="counter-label">
        <span id="counter-label">Shared counter</span>
        <output data-testid="counter-value" aria-live="polite" aria-labelledby="counter-label">
          {counter}
        </output>
        <button
          type="button"
          className="primary"
          data-testid="counter-increment"
          aria-label="Add 1 to the shared counter"
          disabled={!rep}
          onClick={() => void rep?.mutate.increment({ key: COUNTER_KEY, delta: 1 })}
        >
          +1
        </button>
      </section>

      <form className="new-todo" onSubmit={addTodo}>
        <label htmlFor="new-todo">New todo</label>
        <input
          id="new-todo"
          data-testid="new-todo"
          placeholder="What needs doing? Press Enter to add"
          autoComplete="off"
          value={newText}
          onChange={(e) => setNewText(e.currentTarget.value)}
          disabled={!rep}
        />
      </form>

      {todos.length === 0 ? (
        <p className="empty" data-testid="todos-empty">
          Nothing to do yet.
        </p>
      ) : (
        <ul className="todos" data-testid="todo-list" aria-label="Todos">
          {todos.map((t, i) => (
            <TodoItem
              key={t.id}
              todo={t}
              isFirst={i === 0}
              isLast={i === todos.length - 1}
              focusMove={moved?.id === t.id ? moved : undefined}
              onMoveFocused={clearMoved}
              onToggle={(completed) => void rep?.mutate.updateTodo({ id: t.id, completed })}
              onSaveText={(text) => {
                const trimmed = text.trim();
                if (trimmed === '') void rep?.mutate.deleteTodo(t.id);
                else if (trimmed !== t.text) void rep?.mutate.updateTodo({ id: t.id, text: trimmed });
              }}
              onDelete={() => void rep?.mutate.deleteTodo(t.id)}
              onMove={(dir) => move(i, dir)}
            />
          ))}
        </ul>
      )}
      <p className="meta" data-testid="todo-count">
        {left} {left === 1 ? 'item' : 'items'} left · {todos.length} in all
      </p>
    </main>
  );
}
