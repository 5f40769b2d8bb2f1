# The two commands a newcomer needs: `make run` and `make test`.
# Everything they need is installed by scripts/deps.sh when missing.
SHELL := /bin/bash
# Every module that go.work uses (see workspace_pkgs in scripts/common.sh).
PKGS  := $(shell source scripts/common.sh && workspace_pkgs)
BIN   := .cache/bin

.PHONY: run test bench lint build deps engines-start engines-stop cluster-start cluster-stop clean

## run: real Kafka + ClickHouse on 127.0.0.1, every service (a fake Stripe included), demo traffic;
## stops everything it started on Ctrl-C or SIGTERM (tested by firsthour/)
run:
	scripts/run-demo.sh

## test: every test against the real engines (started and stopped here)
test:
	scripts/test.sh

## bench: the whole pipeline beside ClickHouse's Kafka engine, usage-api beside a bare handler, the stage benchmarks; prints the README's tables
bench:
	scripts/bench.sh

## lint: gofmt, go vet, shellcheck
lint:
	@out=$$(gofmt -l $(patsubst ./%/...,%,$(PKGS))); if [[ -n $$out ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet $(PKGS)
	@if command -v shellcheck >/dev/null; then shellcheck -x scripts/*.sh .ci/run; else echo "shellcheck not installed: skipped"; fi

## build: the service binaries into .cache/bin
build:
	go build -o $(BIN)/ ./consumer/cmd/usage-consumer ./producer/cmd/usage-loadgen ./billing-sync/cmd/usage-billing-sync \
		./api/cmd/usage-api ./api/cmd/usage-demo-app ./ops/cmd/usage-ops

deps:
	scripts/deps.sh

engines-start:
	scripts/engines.sh start

engines-stop:
	scripts/engines.sh stop

## cluster-start: 3 Kafka brokers (RF 3, min ISR 2), ZooKeeper and 2 ClickHouse servers on
## 127.0.0.1, the setup of cluster/README.md; prints their addresses
cluster-start:
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

## clean: stop the engines and delete their data, the demo's fake Stripe journal (it goes with
## billing-sync's ledger in ClickHouse) and the build output
clean:
	scripts/engines.sh stop --purge
	rm -f .cache/run/stripe-fake.jsonl
	rm -rf $(BIN)
