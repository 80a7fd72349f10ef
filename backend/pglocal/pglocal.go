// Package pglocal runs a PostgreSQL cluster from the machine's own Postgres
// binaries (initdb, pg_ctl, postgres) in a directory of our choosing. Tests use
// it for throwaway clusters on a random port; `make dev` uses it for a cluster
// that persists in a local folder. Nothing needs a Postgres already running.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
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
	// (Dir/postgres.log). Created if missing. Required. A relative Dir is
	// resolved against the working directory once, by Start or Open; every
	// path handed to the Postgres programs is absolute, and they run in "/".
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
	cfg       Config // cfg.Dir is absolute
	bin       string
	runAs     *user.User // nil when not root
	port      int
	dataDir   string // absolute: cfg.Dir/data
	movedFrom string // where Start found the data and moved it from; "" if it was in place
}

// newCluster resolves cfg.Dir to an absolute path, once, and finds the
// binaries and the user to run them as.
func newCluster(cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pglocal: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pglocal: resolve %s: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	c := &Cluster{cfg: cfg, port: cfg.Port, dataDir: filepath.Join(dir, "data")}
	if c.bin, err = findBinDir(); err != nil {
		return nil, err
	}
	// initdb and postgres refuse to run as root; run them as an unprivileged
	// user that owns the directory.
	if os.Geteuid() == 0 {
		if c.runAs, err = unprivilegedUser(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Start creates the cluster if Dir has none yet and starts it. If Dir has no
// cluster but holds one further down (where versions before the fix of
// relative Dirs put it: Dir/<Dir as given>/data), Start moves that one into
// place first; MovedFrom says so.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	given := cfg.Dir
	c, err := newCluster(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("pglocal: create dir: %w", err)
	}
	if err := c.chownForRunAs(c.cfg.Dir); err != nil {
		return nil, err
	}
	if !c.hasCluster() {
		if err := c.adoptNested(ctx, given); err != nil {
			return nil, err
		}
	}
	if !c.hasCluster() {
		if err := c.initdb(ctx); err != nil {
			return nil, err
		}
	}

	if cfg.Port != 0 {
		running, err := c.Running(ctx)
		if err != nil {
			return nil, err
		}
		if running {
			// Already running (an earlier `make dev` left it up): use it.
			return c, nil
		}
		// Said plainly rather than in the tail of Postgres's log.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)))
		if err != nil {
			return nil, fmt.Errorf("pglocal: port %d on 127.0.0.1 is taken by another program (another cluster?): %w", cfg.Port, err)
		}
		_ = l.Close()
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
	logFile := filepath.Join(c.cfg.Dir, "postgres.log") // absolute, as every path here
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
func Open(cfg Config) (*Cluster, error) { return newCluster(cfg) }

// Dir is the cluster's folder, absolute.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// MovedFrom is the data directory Start found below Dir and moved to
// Dir/data, or "" when the cluster was in place (or new).
func (c *Cluster) MovedFrom() string { return c.movedFrom }

// Running reports whether a server runs on the cluster's data directory.
func (c *Cluster) Running(ctx context.Context) (bool, error) {
	return c.runningAt(ctx, c.dataDir)
}

func (c *Cluster) runningAt(ctx context.Context, dataDir string) (bool, error) {
	err := c.run(ctx, "pg_ctl", "-D", dataDir, "status")
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && (exit.ExitCode() == 3 || exit.ExitCode() == 4):
		// 3: not running; 4: no data directory.
		return false, nil
	default:
		return false, fmt.Errorf("pglocal: pg_ctl status: %w", err)
	}
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

// hasCluster reports whether Dir/data holds a cluster.
func (c *Cluster) hasCluster() bool {
	_, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION"))
	return err == nil
}

// initdb creates the cluster in a folder beside Dir/data and renames it into
// place once complete, so that an interrupted initdb (Ctrl-C during the first
// `make dev`) leaves no half-made cluster behind for the next start to trip
// over.
func (c *Cluster) initdb(ctx context.Context) error {
	if err := c.clearDataDir(); err != nil {
		return err
	}
	tmp := filepath.Join(c.cfg.Dir, "data.initdb")
	// A leftover of an interrupted initdb never held data: no server runs on it.
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("pglocal: remove %s: %w", tmp, err)
	}
	if err := c.run(ctx, "initdb", "-D", tmp, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"); err != nil {
		return fmt.Errorf("pglocal: initdb: %w", err)
	}
	if err := os.Rename(tmp, c.dataDir); err != nil {
		return fmt.Errorf("pglocal: move the new cluster into place: %w", err)
	}
	return nil
}

// clearDataDir makes room for a cluster at Dir/data, which has none: it
// removes an empty folder there and refuses to touch anything else.
func (c *Cluster) clearDataDir() error {
	entries, err := os.ReadDir(c.dataDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("pglocal: read %s: %w", c.dataDir, err)
	case len(entries) > 0:
		return fmt.Errorf("pglocal: %s holds files but no cluster (no PG_VERSION); move it out of the way", c.dataDir)
	}
	if err := os.Remove(c.dataDir); err != nil {
		return fmt.Errorf("pglocal: remove empty %s: %w", c.dataDir, err)
	}
	return nil
}

// maxNestedDepth bounds how deep below Dir adoptNested looks for a cluster.
const maxNestedDepth = 6

// adoptNested looks for a cluster below Dir, where pglocal before the fix of
// relative Dirs created it when running as root (it ran initdb in Dir with the
// relative path, so a given Dir of .dev/postgres held its cluster in
// .dev/postgres/.dev/postgres/data), and moves it to Dir/data: stopped first if
// an earlier run left it up, its log moved beside it, the folders emptied by
// the move removed. Nothing else is touched; more than one candidate is an
// error that names them.
func (c *Cluster) adoptNested(ctx context.Context, given string) error {
	var found []string
	if !filepath.IsAbs(given) {
		// The one place the old code put it.
		nested := filepath.Join(c.cfg.Dir, given, "data")
		if _, err := os.Stat(filepath.Join(nested, "PG_VERSION")); err == nil {
			found = append(found, nested)
		}
	}
	if len(found) == 0 {
		// Anywhere else below Dir (the Dir was given in another form then).
		err := filepath.WalkDir(c.cfg.Dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() || path == c.cfg.Dir {
				return nil
			}
			rel, _ := filepath.Rel(c.cfg.Dir, path)
			if path == c.dataDir || path == filepath.Join(c.cfg.Dir, "data.initdb") ||
				strings.Count(rel, string(filepath.Separator)) >= maxNestedDepth {
				return fs.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "PG_VERSION")); err == nil {
				found = append(found, path)
				return fs.SkipDir
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("pglocal: look for a cluster below %s: %w", c.cfg.Dir, err)
		}
	}
	switch len(found) {
	case 0:
		return nil
	case 1:
	default:
		return fmt.Errorf("pglocal: %s has no cluster in data/ but %d below it (%s); move the one to keep to %s",
			c.cfg.Dir, len(found), strings.Join(found, ", "), c.dataDir)
	}
	old := found[0]
	running, err := c.runningAt(ctx, old)
	if err != nil {
		return err
	}
	if running {
		if err := c.run(ctx, "pg_ctl", "-D", old, "-m", "fast", "-w", "stop"); err != nil {
			return fmt.Errorf("pglocal: stop the server running on %s before moving it: %w", old, err)
		}
	}
	if err := c.clearDataDir(); err != nil {
		return err
	}
	if err := os.Rename(old, c.dataDir); err != nil {
		return fmt.Errorf("pglocal: move %s to %s: %w", old, c.dataDir, err)
	}
	c.movedFrom = old
	// The old log went beside the old data directory.
	parent := filepath.Dir(old)
	oldLog, newLog := filepath.Join(parent, "postgres.log"), filepath.Join(c.cfg.Dir, "postgres.log")
	if _, err := os.Stat(newLog); errors.Is(err, os.ErrNotExist) {
		_ = os.Rename(oldLog, newLog) // a missing old log is no loss
	}
	// Remove the folders the move emptied; os.Remove leaves any that are not.
	for p := parent; p != c.cfg.Dir && strings.HasPrefix(p, c.cfg.Dir+string(filepath.Separator)); p = filepath.Dir(p) {
		if os.Remove(p) != nil {
			break
		}
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	// Every path in args is absolute, so the folder a program runs in does not
	// matter: "/", which exists and which the user it runs as may enter,
	// whatever our own working directory is.
	cmd.Dir = "/"
	// Cancelled (Ctrl-C), a program gets SIGTERM and may clean up (initdb
	// removes what it made); one that does not exit is killed.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if c.runAs != nil {
		uid, _ := strconv.Atoi(c.runAs.Uid)
		gid, _ := strconv.Atoi(c.runAs.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// chownForRunAs gives the directory (absolute), and makes its parents
// traversable, to the unprivileged user when we run as root.
func (c *Cluster) chownForRunAs(dir string) error {
	if c.runAs == nil {
		return nil
	}
	uid, _ := strconv.Atoi(c.runAs.Uid)
	gid, _ := strconv.Atoi(c.runAs.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("pglocal: chown %s: %w", dir, err)
	}
	for p := filepath.Dir(dir); p != "/" && p != "."; p = filepath.Dir(p) {
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
