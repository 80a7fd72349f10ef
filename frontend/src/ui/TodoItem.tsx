import { useEffect, useRef, useState, type KeyboardEvent } from 'react';
import type { Todo } from '../mutators';

export interface TodoItemProps {
  todo: Todo;
  isFirst: boolean;
  isLast: boolean;
  /**
   * Set when this todo was just moved with its arrow buttons: once its sort changes (the move applied), focus
   * goes back to the arrow, then `onMoveFocused` is called.
   */
  focusMove?: { dir: 'up' | 'down'; fromSort: number } | undefined;
  onMoveFocused(): void;
  onToggle(completed: boolean): void;
  onSaveText(text: string): void;
  onDelete(): void;
  onMove(dir: 'up' | 'down'): void;
}

export function TodoItem(props: TodoItemProps) {
  const { todo, isFirst, isLast, focusMove, onMoveFocused, onToggle, onSaveText, onDelete, onMove } = props;
  const [editing, setEditing] = useState(false);
  const editButton = useRef<HTMLButtonElement>(null);
  const upButton = useRef<HTMLButtonElement>(null);
  const downButton = useRef<HTMLButtonElement>(null);
  // Enter and Escape end editing, and the input's removal then fires a blur: only the first ending counts.
  const finished = useRef(false);
  const returnFocus = useRef(false);

  useEffect(() => {
    if (!focusMove || todo.sort === focusMove.fromSort) return;
    // Reordering moves this element in the DOM, which drops focus; put it back where the user was, or on the
    // other arrow when this one is now disabled (the todo reached an end).
    const preferred = focusMove.dir === 'up' ? upButton.current : downButton.current;
    const other = focusMove.dir === 'up' ? downButton.current : upButton.current;
    (preferred && !preferred.disabled ? preferred : other)?.focus();
    onMoveFocused();
  }, [focusMove, todo.sort, onMoveFocused]);

  useEffect(() => {
    if (!editing && returnFocus.current) {
      returnFocus.current = false;
      editButton.current?.focus();
    }
  }, [editing]);

  function startEditing() {
    finished.current = false;
    setEditing(true);
  }

  function finish(input: HTMLInputElement, save: boolean, refocus: boolean) {
    if (finished.current) return;
    finished.current = true;
    if (save) onSaveText(input.value);
    returnFocus.current = refocus;
    setEditing(false);
  }

  function onEditKey(e: KeyboardEvent<HTMLInputElement>) {
    if (e.key === 'Enter') {
      e.preventDefault();
      finish(e.currentTarget, true, true);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      finish(e.currentTarget, false, true);
    }
  }

  const name = todo.text || 'untitled todo';
  return (
    <li
      className={`todo${todo.completed ? ' completed' : ''}${editing ? ' editing' : ''}`}
      data-testid="todo-item"
      data-todo-id={todo.id}
      data-completed={todo.completed}
    >
      <input
        type="checkbox"
        className="toggle"
        data-testid="todo-toggle"
        checked={todo.completed}
        onChange={(e) => onToggle(e.currentTarget.checked)}
        aria-label={`Done: ${name}`}
      />
      {editing ? (
        <input
          className="edit"
          data-testid="todo-edit-input"
          aria-label={`Edit ${name}`}
          defaultValue={todo.text}
          autoFocus
          onFocus={(e) => e.currentTarget.select()}
          onKeyDown={onEditKey}
          onBlur={(e) => finish(e.currentTarget, true, false)}
        />
      ) : (
        <span className="text" data-testid="todo-text" onDoubleClick={startEditing}>
          {todo.text}
        </span>
      )}
      <span className="actions">
        <button
          type="button"
          ref={editButton}
          data-testid="todo-edit"
          onClick={startEditing}
          aria-label={`Edit ${name}`}
          hidden={editing}
        >
          Edit
        </button>
        <button
          type="button"
          ref={upButton}
          data-testid="todo-move-up"
          onClick={() => onMove('up')}
          disabled={isFirst}
          aria-label={`Move ${name} up`}
        >
          ↑
        </button>
        <button
          type="button"
          ref={downButton}
          data-testid="todo-move-down"
          onClick={() => onMove('down')}
          disabled={isLast}
          aria-label={`Move ${name} down`}
        >
          ↓
        </button>
        <button type="button" className="danger" data-testid="todo-delete" onClick={onDelete} aria-label={`Delete ${name}`}>
          ✕
        </button>
      </span>
    </li>
  );
}
