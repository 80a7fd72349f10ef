# Spaceport: the two commands a newcomer needs are `make dev` and `make test`.
SHELL := /usr/bin/env bash
GO_PKGS := ./backend/... ./router/... ./fly/...

.PHONY: test test-go test-frontend fuzz fuzz-long vet dev bench e2e fmt frontend

## test: every test, as CI runs it (real Postgres, real WebSockets, race detector).
test: vet test-go fuzz test-frontend e2e

vet:
	@unformatted=$$(gofmt -l backend router fly); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	go vet $(GO_PKGS)

test-go:
	go test -race -count=1 -timeout 10m $(GO_PKGS)

## fuzz: every decoder's fuzz target for a short while (FUZZTIME each; seeds are committed under testdata/).
FUZZTIME ?= 10s
fuzz:
	go test -run=^$$ -fuzz=FuzzDecodeClientFrame -fuzztime=$(FUZZTIME) ./backend/protocol
	go test -run=^$$ -fuzz=FuzzVerify -fuzztime=$(FUZZTIME) ./backend/auth
	go test -run=^$$ -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./fly/replay
	go test -run=^$$ -fuzz=FuzzDecodePoke -fuzztime=$(FUZZTIME) ./backend/syncclient

## fuzz-long: the same targets for longer (FUZZTIME_LONG each), to run by hand; `make test` keeps the short run.
## New failing inputs land in each package's testdata/fuzz/: commit them with the fix.
FUZZTIME_LONG ?= 5m
fuzz-long:
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME_LONG)

frontend/node_modules: frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	@touch $@

test-frontend: frontend/node_modules
	cd frontend && npm test

## frontend: build frontend/dist, which the router serves.
frontend: frontend/node_modules
	cd frontend && npm run build

## e2e: browser tests (Debian's chromium) against the whole local stack, started as `make dev` starts it.
e2e: frontend
	cd frontend && SKIP_FRONTEND=1 npm run e2e

## dev: run the whole system locally (Postgres in .dev/, backends, router, edge on :8080).
dev:
	./scripts/dev

## bench: the benchmark suite; writes docs/benchmarks.md.
bench:
	./scripts/bench

fmt:
	gofmt -w backend router fly
