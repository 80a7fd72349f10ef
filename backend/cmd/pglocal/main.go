// Command pglocal starts or stops a Postgres cluster kept in a local folder,
// from the machine's own Postgres binaries: `make dev` runs its database this
// way, with no Postgres service and no Docker.
//
//	pglocal start -dir .dev/postgres -port 54329   # prints DATABASE_URL
//	pglocal stop  -dir .dev/postgres
//
// A relative -dir is taken from the working directory. start on a cluster that
// is already running prints its URL; stop on one that is not running does
// nothing. start moves a cluster that an earlier version left nested in the
// folder (.dev/postgres/.dev/postgres/data, when run as root) into place, and
// says so on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
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
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}

// run runs one command: the URL goes to stdout, notices to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: pglocal start|stop -dir DIR [-port PORT]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
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
		if from := c.MovedFrom(); from != "" {
			fmt.Fprintf(stderr, "pglocal: found the database an earlier make dev put in %s by mistake; moved it to %s, data and all\n",
				from, filepath.Join(c.Dir(), "data"))
		}
		// Creating the database again on later starts fails harmlessly.
		_ = c.CreateDatabase(ctx, DefaultDatabase)
		fmt.Fprintln(stdout, c.URL(DefaultDatabase))
		return nil
	case "stop":
		c, err := pglocal.Open(cfg)
		if err != nil {
			return err
		}
		running, err := c.Running(ctx)
		if err != nil || !running {
			return err
		}
		return c.Stop(ctx)
	default:
		return fmt.Errorf("unknown command %q (start or stop)", args[0])
	}
}
