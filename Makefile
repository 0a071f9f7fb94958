# crowd: `make help` lists the targets.
SHELL := /bin/bash
NPM ?= npm
# Debian packages the tests and benchmarks use (promtool comes with prometheus).
DEB_PACKAGES := strace wrk prometheus curl

.PHONY: help install deps build run test bench bench-drain clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

node_modules/.installed: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@

dist/.built: node_modules/.installed tsconfig.json $(shell find src test bench -name '*.ts' 2>/dev/null)
	npx tsc -p tsconfig.json
	@touch $@

install: node_modules/.installed dist/.built ## install npm packages and compile TypeScript

deps: ## install the Debian packages tests and benchmarks need (strace, wrk, promtool)
	@missing=""; \
	for c in strace:strace wrk:wrk promtool:prometheus curl:curl; do \
	  command -v $${c%%:*} >/dev/null || missing="$$missing $${c##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: dist/.built ## compile TypeScript to dist/

run: install ## start crowd on config/crowd.example.toml (log in ./data)
	./bin/crowd start -c config/crowd.example.toml

test: deps install ## install what the tests need and run them all
	npx tap dist/test/unit dist/test/integration dist/test/crash

bench: deps install ## run the ingest benchmark (crowd vs the uWS no-op ceiling)
	node dist/bench/ingest.js

bench-drain: install ## run the drain benchmark (crowd delivering a backlog vs a bare undici client)
	node dist/bench/drain.js

clean: ## remove build output and the local ./data log
	rm -rf dist data .tap
