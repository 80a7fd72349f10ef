module github.com/spaceport-sync/spaceport/fly

go 1.26.0

require (
	github.com/coder/websocket v1.8.15
	github.com/jackc/pgx/v5 v5.12.0
	github.com/pelletier/go-toml/v2 v2.4.3
	github.com/spaceport-sync/spaceport/backend v0.0.0-00010101000000-000000000000
)

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	golang.org/x/text v0.42.0 // indirect
)

// The end-to-end tests in fly/e2e drive the system with the backend's sync
// client and its test Postgres. The fly module builds inside the go.work
// workspace and also on its own (backend/ beside fly/).
replace github.com/spaceport-sync/spaceport/backend => ../backend
