#!/usr/bin/env bash
# make bench: starts the engines, then
#  1. usage-bench (bench/): the whole pipeline as processes (SDK -> Kafka ->
#     usage-consumer + usage-aggregator -> a private ClickHouse server + quota
#     state), then ClickHouse's own Kafka engine on the same events; one JSON
#     record per mode is appended to $BENCH_OUT (.cache/bench/runs.jsonl);
#  2. usage-api beside a bare net/http handler under wrk (api/bench/run.sh;
#     BENCH_API=0 skips it), then the tenant curve (BENCH_TENANT_CURVE);
#  3. unless BENCH_STAGES=0, the stage benchmarks (go test -bench);
#  4. the README's tables from this run's records (usage-bench --table --since).
# BENCH_EVENTS sets the event count per benchmark (default 500000);
# BENCH_MODES the usage-bench modes (default pipeline,chkafka);
# BENCH_TENANTS the tenants the events spread over (default 50);
# BENCH_TENANT_CURVE a list of tenant counts for the memory curve (default none);
# BENCH_OUT, BENCH_TENANTS_OUT and BENCH_LOG_DIR where records and logs go, BENCH_BIN_DIR the binaries, and
# BENCH_CH_PORT (19310) the private server's port, so two runs can share a machine.
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
since=$(date -u +%FT%TZ) # this run's records are the ones from now on

# A private ClickHouse server: usage-bench restarts it, and its CPU is then
# only this benchmark's work (the shared engines serve everyone's tests).
# Its CH_* settings go only to the commands that handle it: clickhouse.sh
# defaults to the shared server, which must never be stopped from here.
# A broker on a KAFKA_PORT of its own (not the shared 19092) serves only this
# run, so its CPU figure is this run's work.
kafka_private=""
if [[ -n ${KAFKA_PORT:-} && $KAFKA_PORT != 19092 ]]; then
  kafka_private=--kafka-private
fi
bench_ch_port=${BENCH_CH_PORT:-19310}
bench_ch_dir="$CACHE_DIR/run/clickhouse-bench-$bench_ch_port"
bench_logs=${BENCH_LOG_DIR:-$CACHE_DIR/run/bench-logs}
bin=${BENCH_BIN_DIR:-$CACHE_DIR/bin}
bench_ch() {
  CH_TCP_PORT=$bench_ch_port CH_HTTP_PORT=${BENCH_CH_HTTP_PORT:-18330} \
    CH_INTERSERVER_PORT=${BENCH_CH_INTERSERVER_PORT:-19319} CH_DIR=$bench_ch_dir "$@"
}
bench_ch "$SCRIPTS_DIR/clickhouse.sh" start
trap 'bench_ch "$SCRIPTS_DIR/clickhouse.sh" stop --purge >/dev/null 2>&1 || true' EXIT
go build -o "$bin/" ./consumer/cmd/usage-consumer ./aggregator/cmd/usage-aggregator
go build -o "$bin/usage-bench" ./bench
echo "== the whole pipeline as processes, then ClickHouse's Kafka engine, $n events each (JSON: ${BENCH_OUT:-$CACHE_DIR/bench/runs.jsonl})"
bench_ch "$bin/usage-bench" --events "$n" --tenants "${BENCH_TENANTS:-50}" --modes "${BENCH_MODES:-pipeline,chkafka}" \
  --kafka "$USAGE_TEST_KAFKA" --kafka-pidfile "$CACHE_DIR/run/kafka-${KAFKA_PORT:-19092}/kafka.pid" $kafka_private \
  --clickhouse "127.0.0.1:$bench_ch_port" --clickhouse-pidfile "$bench_ch_dir/clickhouse.pid" --clickhouse-script "$SCRIPTS_DIR/clickhouse.sh" \
  --consumer "$bin/usage-consumer" --aggregator "$bin/usage-aggregator" \
  --out "${BENCH_OUT:-$CACHE_DIR/bench/runs.jsonl}" --dir "$bench_logs"
# usage-api beside a bare net/http handler under wrk (api/README.md, "Figures"), before the
# tenant curve: its 1M-tenant run leaves the machine busy freeing 8 GB for a while.
if [[ ${BENCH_API:-1} != 0 ]]; then
  BENCH_BIN_DIR=$bin "$REPO_ROOT/api/bench/run.sh"
fi
# Memory and cost curve: BENCH_TENANT_CURVE="1000 10000 100000 1000000" runs the pipeline once
# per tenant count (at least 2 events per tenant, so every tenant has rows of both meters).
for tenants in ${BENCH_TENANT_CURVE:-}; do
  echo "== the whole pipeline over $tenants tenants (JSON: $CACHE_DIR/bench/tenants.jsonl)"
  bench_ch "$bin/usage-bench" --events "$((2 * tenants > n ? 2 * tenants : n))" --tenants "$tenants" --modes pipeline \
    --freshness 0 --duplicates 0 --restart=false \
    --kafka "$USAGE_TEST_KAFKA" --kafka-pidfile "$CACHE_DIR/run/kafka-${KAFKA_PORT:-19092}/kafka.pid" $kafka_private \
    --clickhouse "127.0.0.1:$bench_ch_port" --clickhouse-pidfile "$bench_ch_dir/clickhouse.pid" \
    --consumer "$bin/usage-consumer" --aggregator "$bin/usage-aggregator" \
    --out "${BENCH_TENANTS_OUT:-$CACHE_DIR/bench/tenants.jsonl}" --dir "$bench_logs"
done

# The README's tables, from this run's JSON records only.
readme_tables() {
  echo "== the README's tables of this run (records since $since)"
  "$bin/usage-bench" --table "${BENCH_OUT:-$CACHE_DIR/bench/runs.jsonl}" --since "$since"
  if [[ -n ${BENCH_TENANT_CURVE:-} ]]; then
    echo
    "$bin/usage-bench" --table "${BENCH_TENANTS_OUT:-$CACHE_DIR/bench/tenants.jsonl}" --since "$since"
  fi
  if [[ ${BENCH_API:-1} != 0 ]]; then
    echo
    "$bin/wrkbench" --table "${BENCH_API_OUT:-$CACHE_DIR/bench/api.jsonl}" --since "$since"
  fi
}
if [[ ${BENCH_STAGES:-1} == 0 ]]; then
  readme_tables
  exit 0
fi

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
echo "== quota: Check on a warm cache (p50/p99 per call, allocs), then publish -> cache decision freshness at 10k events/s"
go test -run '^$' -bench 'BenchmarkCheck$' -benchmem -benchtime 2000000x ./quota/
go test -run '^$' -bench 'Freshness' -benchtime 1x ./quota/
readme_tables
