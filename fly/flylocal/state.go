package flylocal

import (
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/spaceport-sync/spaceport/fly/replay"
)

// stateFileName is the file in Config.StateDir that maps apps to machine IDs and ports.
const stateFileName = "machines.json"

// Machine ports are drawn from [portMin, portMax], below the ephemeral ranges of Linux (32768-60999) and macOS
// (49152-65535), so that a port kept for a machine is rarely taken by an outgoing connection while flylocal is
// down.
const (
	portMin = 20000
	portMax = 32000
)

// savedMachine is a machine's identity as kept in the state file.
type savedMachine struct {
	App  string `json:"app"`
	ID   string `json:"id"`
	Port int    `json:"port"`
}

// stateFile is the content of the state file. Machines of apps no longer configured, or beyond an app's current
// machine count, are kept, so scaling down and up again brings back the same IDs.
type stateFile struct {
	Machines []savedMachine `json:"machines"`
}

// assignMachines returns the identities of the configured machines: those in the state file first, in order, then
// new ones, which it saves. A kept port that is no longer free is replaced. The ports returned are claimed
// (claimPort); the caller releases them with releasePorts when its machines are gone. On error, nothing stays
// claimed.
func assignMachines(cfg Config) (machines []savedMachine, err error) {
	path := filepath.Join(cfg.StateDir, stateFileName)
	var st stateFile
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read state: %w", err)
	default:
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("read state %s: %w", path, err)
		}
	}

	ids := make(map[string]bool, len(st.Machines))
	for _, m := range st.Machines {
		ids[m.ID] = true
	}
	used := make(map[int]bool)
	defer func() {
		if err != nil {
			releasePorts(slices.Collect(maps.Keys(used)))
		}
	}()
	var out []savedMachine
	for _, app := range cfg.Apps {
		n := 0
		for i := range st.Machines {
			m := &st.Machines[i]
			if m.App != app.Name || n == app.Machines {
				continue
			}
			if !replay.ValidMachineID(m.ID) {
				return nil, fmt.Errorf("state %s: %q is not a machine ID", path, m.ID)
			}
			if used[m.Port] || !claimPort(m.Port) {
				if m.Port, err = freePort(used); err != nil {
					return nil, err
				}
			}
			used[m.Port] = true
			out = append(out, *m)
			n++
		}
		for ; n < app.Machines; n++ {
			m := savedMachine{App: app.Name, ID: newMachineID(ids)}
			if m.Port, err = freePort(used); err != nil {
				return nil, err
			}
			ids[m.ID] = true
			used[m.Port] = true
			st.Machines = append(st.Machines, m)
			out = append(out, m)
		}
	}

	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("write state: %w", err)
	}
	data, err = json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write state: %w", err)
	}
	return out, nil
}

// newMachineID returns a random machine ID not in taken: replay.MachineIDLength lowercase hex characters, like
// Fly's.
func newMachineID(taken map[string]bool) string {
	for {
		b := make([]byte, replay.MachineIDLength/2)
		_, _ = crand.Read(b) // crypto/rand.Read never fails
		if id := hex.EncodeToString(b); !taken[id] {
			return id
		}
	}
}

// claimed holds the ports of the machines of the servers running in this process, so that two servers (tests in
// parallel) never pick the same free port before either machine binds it. A server releases its ports when it
// closes.
var claimed struct {
	sync.Mutex
	ports map[int]bool
}

// claimPort claims port if it is free and no server of this process has claimed it.
func claimPort(port int) bool {
	claimed.Lock()
	defer claimed.Unlock()
	if claimed.ports[port] || !portFree(port) {
		return false
	}
	if claimed.ports == nil {
		claimed.ports = make(map[int]bool)
	}
	claimed.ports[port] = true
	return true
}

// releasePorts gives up ports claimed by claimPort or freePort.
func releasePorts(ports []int) {
	claimed.Lock()
	defer claimed.Unlock()
	for _, p := range ports {
		delete(claimed.ports, p)
	}
}

// freePort claims a port in [portMin, portMax] that is free now and not in used.
func freePort(used map[int]bool) (int, error) {
	for range 1000 {
		if p := portMin + rand.IntN(portMax-portMin+1); !used[p] && claimPort(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d", portMin, portMax)
}

// portFree reports whether a machine could listen on port now. Machines usually listen on all interfaces
// (":PORT"), so that is what is tried.
func portFree(port int) bool {
	if port < 1 || port > 65535 {
		return false
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}
