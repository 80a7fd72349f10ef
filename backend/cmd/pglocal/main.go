// Command pglocal starts or stops a Postgres cluster kept in a local folder,
// from the machine's own Postgres binaries: `make dev` runs its database this
// way, with no Postgres service and no Docker.
//
//	pglocal start -dir .dev/postgres -port 54329   # prints DATABASE_URL
//	pglocal stop  -dir .dev/postgres
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spaceport-sync/spaceport/backend/pglocal"
)

// DefaultPort is the port of the dev cluster, away from a system Postgres.
const DefaultPort = 54329

// DefaultDatabase is the database created for the system.
const DefaultDatabase = "spaceport"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: pglocal start|stop -dir DIR [-port PORT]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("dir", ".dev/postgres", "cluster folder (created on first start)")
	port := fs.Int("port", DefaultPort, "TCP port on 127.0.0.1")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg := pglocal.Config{Dir: *dir, Port: *port, Durable: true}
	switch args[0] {
	case "start":
		c, err := pglocal.Start(ctx, cfg)
		if err != nil {
			return err
		}
		// Creating the database again on later starts fails harmlessly.
		_ = c.CreateDatabase(ctx, DefaultDatabase)
		fmt.Println(c.URL(DefaultDatabase))
		return nil
	case "stop":
		return pglocal.Open(cfg).Stop(ctx)
	default:
		return fmt.Errorf("unknown command %q (start or stop)", args[0])
	}
}
