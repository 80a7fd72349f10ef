package todoapp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/mutator"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/syncclient"
	"github.com/spaceport-sync/spaceport/backend/todoapp"
	"github.com/spaceport-sync/spaceport/backend/wsserver"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type mutatorCase struct {
	Title   string                     `json:"title"`
	Before  map[string]json.RawMessage `json:"before"`
	Name    string                     `json:"name"`
	Args    json.RawMessage            `json:"args"`
	After   map[string]json.RawMessage `json:"after"`
	Refused bool                       `json:"refused"`
}

// The Go mutators pass the same cases as their TypeScript twins
// (docs/mutator-cases.json), run through the real engine: each case in a
// space of its own, its "before" written by a seeding mutator, then the
// mutation pushed like a browser would, then the client's replica compared.
func TestMutators_SharedCasesWithTheTypeScriptTwins(t *testing.T) {
	raw, err := os.ReadFile("../../docs/mutator-cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []mutatorCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("no cases")
	}

	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st, err := store.Open(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	reg := mutator.NewRegistry()
	todoapp.Register(reg)
	reg.Register("seed", func(tx mutator.Tx, args json.RawMessage) error {
		kv, err := mutator.DecodeArgs[map[string]json.RawMessage](args)
		if err != nil {
			return err
		}
		for k, v := range kv {
			if err := tx.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	spaces := space.NewManager(space.Config{Logger: log}, st, reg)
	srv := wsserver.New(wsserver.Config{Logger: log}, spaces)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	for i, tc := range file.Cases {
		t.Run(tc.Title, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			url := "ws" + strings.TrimPrefix(hs.URL, "http") + fmt.Sprintf("/api/replicache/websocket/case-%d", i)
			c, err := syncclient.Dial(ctx, url, syncclient.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Kill()
			seed := c.Mutation("seed", tc.Before)
			m := c.Mutation(tc.Name, tc.Args)
			if len(tc.Args) == 0 {
				m.Args = json.RawMessage("null")
			}
			if _, err := c.Push(ctx, seed, m); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitLMID(ctx, m.ID); err != nil {
				t.Fatal(err)
			}
			want := tc.After
			if tc.Refused {
				want = tc.Before
			}
			if got := c.State().Data; !jsonMapEqual(got, want) {
				t.Fatalf("%s(%s):\n got %s\nwant %s", tc.Name, tc.Args, show(got), show(want))
			}
		})
	}
}

func jsonMapEqual(a, b map[string]json.RawMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok {
			return false
		}
		var x, y any
		if json.Unmarshal(av, &x) != nil || json.Unmarshal(bv, &y) != nil || !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

func show(m map[string]json.RawMessage) string {
	b, _ := json.Marshal(m)
	return string(b)
}
