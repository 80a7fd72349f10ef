// Package todoapp holds the mutators of the example app: a shared todo list
// (one space is one list) and a counter that never loses an increment. Each
// has a TypeScript twin in frontend/src/mutators.ts that the browser runs
// optimistically; these run again on the server and win.
package todoapp

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spaceport-sync/spaceport/backend/mutator"
)

// TodoPrefix is the key prefix of todos: todo/<id>.
const TodoPrefix = "todo/"

// ReactionPrefix is the key prefix of counters that viewers may increment
// too (a read-only audience can still react).
const ReactionPrefix = "reactions/"

// MaxTodoText bounds a todo's text, in bytes.
const MaxTodoText = 10_000

// Todo is one item of the list.
type Todo struct {
	ID        string  `json:"id"`
	Text      string  `json:"text"`
	Completed bool    `json:"completed"`
	Sort      float64 `json:"sort"`
}

// Register adds the app's mutators to r.
func Register(r *mutator.Registry) {
	r.Register("createTodo", CreateTodo)
	r.Register("updateTodo", UpdateTodo)
	r.Register("deleteTodo", DeleteTodo)
	r.Register("increment", Increment)
}

func requireEditor(tx mutator.Tx) error {
	if tx.Caller().Role == mutator.RoleViewer {
		return fmt.Errorf("%w: viewers cannot edit todos", mutator.ErrForbidden)
	}
	return nil
}

// CreateTodo adds a todo at the end of the list: args {id, text, completed}.
// Its sort is one more than the largest sort in the list, computed here so
// that concurrent creates from different clients end up in arrival order.
func CreateTodo(tx mutator.Tx, args json.RawMessage) error {
	if err := requireEditor(tx); err != nil {
		return err
	}
	in, err := mutator.DecodeArgs[struct {
		ID        string `json:"id"`
		Text      string `json:"text"`
		Completed bool   `json:"completed"`
	}](args)
	if err != nil {
		return err
	}
	if in.ID == "" || len(in.Text) > MaxTodoText {
		return fmt.Errorf("%w: createTodo needs an id and a text under %d bytes", mutator.ErrInvalidArgs, MaxTodoText)
	}
	maxSort := 0.0
	for _, v := range tx.Scan(TodoPrefix) {
		var t Todo
		if json.Unmarshal(v, &t) == nil && t.Sort > maxSort {
			maxSort = t.Sort
		}
	}
	return tx.Put(TodoPrefix+in.ID, Todo{ID: in.ID, Text: in.Text, Completed: in.Completed, Sort: maxSort + 1})
}

// UpdateTodo merges the given fields into an existing todo: args {id, text?,
// completed?, sort?}. Updating a todo that is gone (deleted by someone else
// first) does nothing.
func UpdateTodo(tx mutator.Tx, args json.RawMessage) error {
	if err := requireEditor(tx); err != nil {
		return err
	}
	in, err := mutator.DecodeArgs[struct {
		ID        string   `json:"id"`
		Text      *string  `json:"text"`
		Completed *bool    `json:"completed"`
		Sort      *float64 `json:"sort"`
	}](args)
	if err != nil {
		return err
	}
	if in.ID == "" || (in.Text != nil && len(*in.Text) > MaxTodoText) {
		return fmt.Errorf("%w: updateTodo needs an id and a text under %d bytes", mutator.ErrInvalidArgs, MaxTodoText)
	}
	raw, ok := tx.Get(TodoPrefix + in.ID)
	if !ok {
		return nil
	}
	var t Todo
	if err := json.Unmarshal(raw, &t); err != nil {
		return fmt.Errorf("stored todo %s is corrupt: %w", in.ID, err)
	}
	if in.Text != nil {
		t.Text = *in.Text
	}
	if in.Completed != nil {
		t.Completed = *in.Completed
	}
	if in.Sort != nil {
		t.Sort = *in.Sort
	}
	return tx.Put(TodoPrefix+in.ID, t)
}

// DeleteTodo removes a todo: args is its id (a JSON string).
func DeleteTodo(tx mutator.Tx, args json.RawMessage) error {
	if err := requireEditor(tx); err != nil {
		return err
	}
	id, err := mutator.DecodeArgs[string](args)
	if err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("%w: deleteTodo needs an id", mutator.ErrInvalidArgs)
	}
	tx.Del(TodoPrefix + id)
	return nil
}

// Increment adds delta to the number at key: args {key, delta}. A missing key
// counts as 0. Run in arrival order by the space's single writer, concurrent
// increments from any number of clients all count. Viewers may increment
// only keys under ReactionPrefix.
func Increment(tx mutator.Tx, args json.RawMessage) error {
	in, err := mutator.DecodeArgs[struct {
		Key   string   `json:"key"`
		Delta *float64 `json:"delta"`
	}](args)
	if err != nil {
		return err
	}
	if in.Key == "" || in.Delta == nil {
		return fmt.Errorf("%w: increment needs a key and a delta", mutator.ErrInvalidArgs)
	}
	if tx.Caller().Role == mutator.RoleViewer && !strings.HasPrefix(in.Key, ReactionPrefix) {
		return fmt.Errorf("%w: viewers may only increment %s keys", mutator.ErrForbidden, ReactionPrefix)
	}
	cur := 0.0
	if raw, ok := tx.Get(in.Key); ok {
		if err := json.Unmarshal(raw, &cur); err != nil {
			return fmt.Errorf("%w: %s does not hold a number", mutator.ErrInvalidArgs, in.Key)
		}
	}
	return tx.Put(in.Key, cur+*in.Delta)
}
