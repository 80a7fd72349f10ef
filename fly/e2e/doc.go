// Package e2e holds the end-to-end tests of the whole system on one computer: the real router and backend
// binaries run as flylocal's machines against a real Postgres, and Go sync clients talk to them only through
// flylocal's edge, as browsers do. TestMakeDev runs scripts/dev (what `make dev` runs) and checks that it comes
// up, syncs and stops everything it started; then `make dev` as the README runs it, in a copy of the repository
// with the default DEV_DIR: stopped with Ctrl-C and run again, it comes back with its data, and a second one beside
// it is refused.
//
// The tests build binaries and run processes; `go test -short` skips them.
package e2e
