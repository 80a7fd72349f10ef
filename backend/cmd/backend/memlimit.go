package main

import (
	"fmt"
	"strconv"
)

// memoryLimitPercent is the share of the machine's memory the Go runtime's
// soft limit is set to: under it the garbage collector runs as the heap
// grows by GOGC; near it, it runs as often as it must to stay below. Without
// a limit a heap twice the live data is normal, and on a 512 MB machine that
// is an out-of-memory kill (every space on the machine dropped) long before
// the live data fills the memory. The rest is for goroutine stacks and what
// the runtime cannot give back at once.
const memoryLimitPercent = 85

// memoryLimit is the soft memory limit for a machine of FLY_VM_MEMORY_MB
// megabytes (set by Fly on every machine); ok is false when there is none to
// set: the variable is unset, or GOMEMLIMIT is set (the runtime has applied
// it, and an explicit value wins).
func memoryLimit(getenv func(string) string) (limit int64, ok bool, err error) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, false, nil
	}
	v := getenv("FLY_VM_MEMORY_MB")
	if v == "" {
		return 0, false, nil
	}
	mb, err := strconv.ParseInt(v, 10, 64)
	if err != nil || mb <= 0 {
		return 0, false, fmt.Errorf("FLY_VM_MEMORY_MB %q: want a positive number of megabytes", v)
	}
	return mb << 20 * memoryLimitPercent / 100, true, nil
}
