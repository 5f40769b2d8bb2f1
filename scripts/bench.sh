#!/usr/bin/env bash
# make bench: starts the engines and prints events/s for SDK -> Kafka and for
# Kafka -> ClickHouse through the consumer, then the codec micro-benchmarks.
# BENCH_EVENTS sets the event count per benchmark (default 500000).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
"$SCRIPTS_DIR/deps.sh" kafka clickhouse
env_lines=$("$SCRIPTS_DIR/engines.sh" start)
set -a
eval "$env_lines"
set +a
n=${BENCH_EVENTS:-500000}
echo "== SDK -> Kafka ($n events, acks=all, 4 partitions)"
go test -run '^$' -bench 'Publish' -benchtime "${n}x" ./producer/
echo "== Kafka -> consumer -> ClickHouse, then SDK -> Kafka -> consumer -> ClickHouse at once ($n events)"
go test -run '^$' -bench 'ConsumeToClickHouse|EndToEnd' -benchtime "${n}x" ./consumer/ingest/
echo "== aggregator: sustained events/s and CPU per event ($n events), then publish -> quota state freshness at 10k events/s"
go test -run '^$' -bench 'AggregatorThroughput' -benchtime "${n}x" ./aggregator/service/
go test -run '^$' -bench 'QuotaFreshness' ./aggregator/service/
echo "== the whole pipeline at once: SDK -> Kafka -> consumer + aggregator -> ClickHouse ($n events)"
go test -run '^$' -bench 'Pipeline' -benchtime "${n}x" ./aggregator/service/
echo "== codec (per event)"
go test -run '^$' -bench . -benchmem ./schemas/
echo "== quota: Check on a warm cache (p50/p99 per call, allocs), usage-api /v1/check under vegeta at 10k req/s, publish -> cache decision freshness at 10k events/s"
go test -run '^$' -bench 'BenchmarkCheck$' -benchmem -benchtime 2000000x ./quota/
go test -run '^$' -bench 'CheckHTTP' -benchtime 1x ./api/server/
go test -run '^$' -bench 'Freshness' -benchtime 1x ./quota/
