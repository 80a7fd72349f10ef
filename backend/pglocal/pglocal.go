// Package pglocal runs a PostgreSQL cluster from the machine's own Postgres
// binaries (initdb, pg_ctl, postgres) in a directory of our choosing. Tests use
// it for throwaway clusters on a random port; `make dev` uses it for a cluster
// that persists in a local folder. Nothing needs a Postgres already running.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultStartTimeout bounds how long Start waits for the server to accept
// connections.
const DefaultStartTimeout = 60 * time.Second

// ErrNoBinaries is returned when no initdb/pg_ctl can be found.
var ErrNoBinaries = errors.New("postgres binaries not found (install the postgresql package, or set PG_BIN)")

// Config says where and how to run the cluster.
type Config struct {
	// Dir holds the cluster's data directory (Dir/data) and its log
	// (Dir/postgres.log). Created if missing. Required.
	Dir string
	// Port to listen on at 127.0.0.1. Zero means a free port is chosen.
	Port int
	// Durable keeps fsync on. Zero value (false) turns fsync and
	// synchronous_commit off, which is right for throwaway test clusters
	// (the tests kill our processes, not Postgres) and wrong for anything
	// whose figures or data matter.
	Durable bool
	// StartTimeout bounds the wait for the server. Zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
}

// Cluster is a running local Postgres.
type Cluster struct {
	cfg     Config
	bin     string
	runAs   *user.User // nil when not root
	port    int
	dataDir string
}

// Start creates the cluster if Dir has none yet and starts it.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pglocal: Config.Dir is required")
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, bin: bin, dataDir: filepath.Join(cfg.Dir, "data")}

	// initdb and postgres refuse to run as root; run them as an unprivileged
	// user that owns the directory.
	if os.Geteuid() == 0 {
		u, err := unprivilegedUser()
		if err != nil {
			return nil, err
		}
		c.runAs = u
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("pglocal: create dir: %w", err)
	}
	if err := c.chownForRunAs(cfg.Dir); err != nil {
		return nil, err
	}

	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := c.run(ctx, "initdb", "-D", c.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"); err != nil {
			return nil, fmt.Errorf("pglocal: initdb: %w", err)
		}
	}

	c.port = cfg.Port
	if cfg.Port != 0 && c.run(ctx, "pg_ctl", "-D", c.dataDir, "status") == nil {
		// Already running (an earlier `make dev` left it up): use it.
		return c, nil
	}
	for attempt := 0; ; attempt++ {
		if cfg.Port == 0 {
			if c.port, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = c.startServer(ctx)
		if err == nil {
			return c, nil
		}
		// A randomly chosen port may have been taken in the meantime.
		if cfg.Port != 0 || attempt >= 3 {
			return nil, err
		}
	}
}

func (c *Cluster) startServer(ctx context.Context) error {
	opts := []string{
		"-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=",
		"-c", "max_connections=300",
	}
	if !c.cfg.Durable {
		opts = append(opts, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	logFile := filepath.Join(c.cfg.Dir, "postgres.log")
	err := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-l", logFile, "-w",
		"-t", strconv.Itoa(int(c.cfg.StartTimeout.Seconds())), "-o", strings.Join(opts, " "), "start")
	if err != nil {
		tail, _ := os.ReadFile(logFile)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("pglocal: pg_ctl start on port %d: %w\n%s", c.port, err, tail)
	}
	return nil
}

// Open returns a handle on an existing cluster without starting it (to stop
// one started by an earlier process).
func Open(cfg Config) *Cluster {
	c := &Cluster{cfg: cfg, port: cfg.Port, dataDir: filepath.Join(cfg.Dir, "data")}
	c.bin, _ = findBinDir()
	if os.Geteuid() == 0 {
		c.runAs, _ = unprivilegedUser()
	}
	return c
}

// Port is the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// URL returns a connection URL for the named database.
func (c *Cluster) URL(dbname string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, dbname)
}

// Stop shuts the server down (fast mode: open sessions are disconnected).
func (c *Cluster) Stop(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pglocal: pg_ctl stop: %w", err)
	}
	return nil
}

// Start starts a stopped cluster again on the same port.
func (c *Cluster) Start(ctx context.Context) error { return c.startServer(ctx) }

// Restart stops the server and starts it again on the same port, for tests of
// how the system rides out a database restart.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx); err != nil {
		return err
	}
	return c.startServer(ctx)
}

// CreateDatabase creates an empty database.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	if err := c.run(ctx, "createdb", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres", name); err != nil {
		return fmt.Errorf("pglocal: createdb %s: %w", name, err)
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.runAs != nil {
		uid, _ := strconv.Atoi(c.runAs.Uid)
		gid, _ := strconv.Atoi(c.runAs.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = c.cfg.Dir
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// chownForRunAs gives the directory, and makes its parents traversable, to
// the unprivileged user when we run as root.
func (c *Cluster) chownForRunAs(dir string) error {
	if c.runAs == nil {
		return nil
	}
	uid, _ := strconv.Atoi(c.runAs.Uid)
	gid, _ := strconv.Atoi(c.runAs.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("pglocal: chown %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); p != "/" && p != "."; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			// t.TempDir() parents are 0700; postgres must be able to walk through.
			if err := os.Chmod(p, fi.Mode().Perm()|0o711); err != nil {
				return fmt.Errorf("pglocal: chmod %s: %w", p, err)
			}
		}
	}
	return nil
}

func unprivilegedUser() (*user.User, error) {
	for _, name := range []string{"postgres", "nobody"} {
		if u, err := user.Lookup(name); err == nil {
			return u, nil
		}
	}
	return nil, errors.New("pglocal: running as root and no postgres or nobody user to run Postgres as")
}

// findBinDir finds the directory holding initdb and pg_ctl: $PG_BIN, then the
// newest /usr/lib/postgresql/*/bin (Debian), then $PATH.
func findBinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoBinaries
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pglocal: find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
