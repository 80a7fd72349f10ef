//go:build !race

package stacktest

// RaceEnabled reports whether the test binary runs with the race detector: Build then builds the commands with
// -race too.
const RaceEnabled = false
