# reverse-http: make help lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

BINARY   := bin/reverse-http
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
DATE     ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
PKG      := github.com/reverse-http/reverse-http/internal/cli
LDFLAGS  := -s -w -X $(PKG).Version=$(VERSION) -X $(PKG).Commit=$(COMMIT) -X $(PKG).Date=$(DATE)

.PHONY: help build run test test-go test-deploy test-scale unit e2e vet fmt fuzz fuzz-ci soak bench dist clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

build: ## Build bin/reverse-http
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BINARY) ./cmd/reverse-http

run: build ## Run a local proxy and agent 4711 in the foreground (Ctrl-C stops both)
	@scripts/run-local.sh $(BINARY)

test: vet test-deploy test-go test-scale fuzz-ci ## Run every test: packaging checks, unit and e2e with -race, the HA scale tests, 10s of each fuzz target, a 2-minute soak
	$(MAKE) soak SOAK_DURATION=2m

test-go: ## Unit tests, fuzz seeds and e2e tests (real processes, curl, memcached, nginx) with the race detector
	go test -race -count=1 -timeout 30m ./...

test-deploy: ## Check the packaging (deploy/, Dockerfile; see docs/deploy.md) and make dist on this platform: seconds
	cd deploy && go vet ./... && go test -count=1 ./...
	scripts/test-dist.sh

test-scale: ## The HA scale tests alone on the machine: 2,000-agent failover, 10,000 agents for HA_SCALE_HOLD (3m)
	HA_SCALE=1 go test -count=1 -v -timeout 20m -run 'AtScale$$' ./e2e

unit: ## Run the unit tests only
	go test -race -count=1 $$(go list ./... | grep -v /e2e)

e2e: ## Run the end-to-end tests only
	go test -count=1 -timeout 20m -v ./e2e

vet: ## go vet and gofmt check
	go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

fuzz: FUZZTIME ?= 60s
fuzz: ## Run every fuzz target for FUZZTIME (60s) each
	scripts/fuzz.sh $(FUZZTIME)

fuzz-ci: FUZZTIME ?= 10s
fuzz-ci: ## Run every fuzz target for FUZZTIME (10s) each, as CI does; fails on a finding
	scripts/fuzz.sh $(FUZZTIME)

soak: SOAK_DURATION ?= 10m
soak: ## Run the HA soak test (e2e TestSoak) for SOAK_DURATION (10m); CI runs 2m
	@d='$(SOAK_DURATION)'; case $$d in *h) s=$$(( $${d%h} * 3600 ));; *m) s=$$(( $${d%m} * 60 ));; *s) s=$${d%s};; *) s=x;; esac; \
	  if ! [ "$$s" -ge 60 ] 2>/dev/null; then echo "SOAK_DURATION=$$d: want whole hours, minutes or seconds, at least 1m (10m, 90s)"; exit 2; fi; \
	  set -x; SOAK_DURATION=$$d go test -count=1 -v -run '^TestSoak$$' -timeout $$(( s + 900 ))s ./e2e

bench: ## Run the benchmark suite (see docs/benchmarks.md)
	go run ./bench $(BENCHFLAGS)

DIST      ?= dist
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
dist: ## Release archives and SHA256SUMS in dist/ for PLATFORMS (linux, darwin x amd64, arm64)
	scripts/dist.sh $(DIST) $(VERSION) $(COMMIT) $(PLATFORMS)

clean: ## Remove build output and the quickstart's files
	rm -rf bin .run dist
