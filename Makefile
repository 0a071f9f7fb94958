# crowd: `make help` lists the targets.
SHELL := /bin/bash
NPM ?= npm
# Debian packages the tests and benchmarks use (promtool comes with prometheus; redis-server
# and nats-server are the ingest benchmark's comparison systems, bench/baselines/; gcc and
# libc6-dev build the power-cut shim; openssl makes a test certificate; util-linux has flock,
# unshare and prlimit; iproute2 has ip and tc, for the cluster tests' network namespaces).
DEB_PACKAGES := strace wrk prometheus curl redis-server nats-server gcc libc6-dev openssl util-linux iproute2

.PHONY: help install deps build run test bench bench-full bench-drain clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

node_modules/.installed: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@

dist/.built: node_modules/.installed tsconfig.json $(shell find src test bench -name '*.ts' 2>/dev/null)
	npx tsc -p tsconfig.json
	@touch $@

install: node_modules/.installed dist/.built ## install npm packages and compile TypeScript

deps: ## install the Debian packages tests and benchmarks need (strace, wrk, promtool, redis, nats, gcc, openssl, iproute2)
	@missing=""; \
	for c in strace:strace wrk:wrk promtool:prometheus curl:curl redis-server:redis-server redis-benchmark:redis-tools nats-server:nats-server gcc:gcc openssl:openssl flock:util-linux unshare:util-linux prlimit:util-linux ip:iproute2 tc:iproute2; do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $${c%%:*} >/dev/null || missing="$$missing $${c##*:}"; \
	done; \
	[ -e /usr/include/stdio.h ] || missing="$$missing libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

dist/powercut/shim.so: test/powercut/shim.c
	@mkdir -p dist/powercut
	gcc -O2 -Wall -Wextra -shared -fPIC -o $@ $< -ldl -lpthread

build: dist/.built dist/powercut/shim.so ## compile TypeScript to dist/

run: install ## start crowd on config/crowd.example.toml (log in ./data)
	./bin/crowd start -c config/crowd.example.toml

test: deps install dist/powercut/shim.so ## install what the tests need and run them all
	npx tap dist/test/unit dist/test/integration dist/test/crash dist/test/cluster
	@# Tests that load a whole core on purpose run alone, so they cannot slow the timed ones.
	npx tap --jobs=1 dist/test/serial

bench: deps install ## run the benchmark suite, quick (under 3 minutes): results in bench/results/
	node dist/bench/suite.js

bench-full: deps install ## run the benchmark suite with longer runs and larger backlogs
	node dist/bench/suite.js --full

bench-drain: install ## run only the drain benchmark at its full size (200000 requests)
	node dist/bench/drain.js

clean: ## remove build output and the local ./data log
	rm -rf dist data .tap
