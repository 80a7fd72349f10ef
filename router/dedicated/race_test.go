//go:build race

package dedicated_test

const raceEnabled = true
