package directory

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/migrate"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

// TestMigration3_ExistingSpacesStayOnMain: a directory of before data
// clusters keeps every space on DefaultCluster, counted, and serves them.
func TestMigration3_ExistingSpacesStayOnMain(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := migrate.Up(ctx, pool, migrationOwner, migrations[:2]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO directory.machines (id, app, state) VALUES ('m1', 'app', 'started');
		INSERT INTO directory.spaces (id, app, machine) VALUES ('old1', 'app', 'm1'), ('old2', 'app', 'm1');`); err != nil {
		t.Fatal(err)
	}
	d, err := Open(ctx, pool, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"old1", "old2"} {
		sp, err := d.Lookup(ctx, id)
		if err != nil || sp.Cluster != DefaultCluster || sp.MovingTo != "" || sp.Machine != "m1" {
			t.Fatalf("Lookup(%s) after migration = %+v, %v", id, sp, err)
		}
	}
	list, err := d.ListClusters(ctx)
	if err != nil || len(list) != 1 || list[0] != (ClusterInfo{Name: DefaultCluster, Spaces: 2}) {
		t.Fatalf("ListClusters after migration = %+v, %v", list, err)
	}
	if got, err := d.NotOn(ctx, "m1", []string{"old1", "old2"}); err != nil || len(got) != 0 {
		t.Fatalf("NotOn after migration = %v, %v", got, err)
	}
}
