// Package fly holds Spaceport's deployment on Fly.io and the Go code that stands in for Fly locally.
//
// Deployment files, one folder per app, built from the repository root (see docs/deploy.md):
//
//	router/fly.toml, router/Dockerfile     the router app (and spacectl, the operator's CLI)
//	backend/fly.toml, backend/Dockerfile   the backend app
//	.dockerignore                          the build context's exclusions (fly deploy --ignorefile)
//
// The tests of this package read both fly.toml files and check what the system depends on: ports, app names in
// fly-replay, auto-start where replays need it, stop signals and timeouts longer than the binaries' graceful
// shutdown, deploy strategies that keep machine IDs.
//
// Packages: replay (the fly-replay header grammar), machines (a client of the Machines API), flylocal and
// cmd/flylocal (the local edge, machines and Machines API).
package fly
