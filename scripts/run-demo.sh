#!/usr/bin/env bash
# make run: the whole pipeline on this machine. Installs what is missing,
# starts Kafka and ClickHouse on 127.0.0.1, builds and starts every service
# (usage-consumer with its dashboard on http://127.0.0.1:9464,
# usage-aggregator with the quota page on :9465, usage-billing-sync against a
# fake Stripe, usage-api on :9470 and the demo app behind quota.Middleware on
# :9471), then publishes demo traffic with usage-loadgen until Ctrl-C (or
# DEMO_DURATION, e.g. 60s).
#   DEMO_RATE=2000 DEMO_DURATION=0 DASHBOARD_ADDR=127.0.0.1:9464 make run
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

rate=${DEMO_RATE:-2000}
duration=${DEMO_DURATION:-0}
http_addr=${DASHBOARD_ADDR:-127.0.0.1:9464}
bin="$CACHE_DIR/bin"
run_dir="$CACHE_DIR/run"
mkdir -p "$bin" "$run_dir"

"$SCRIPTS_DIR/deps.sh" kafka clickhouse kcat
env_lines=$("$SCRIPTS_DIR/engines.sh" start)
eval "$env_lines"
echo "== building"
go build -o "$bin/" ./consumer/cmd/usage-consumer ./producer/cmd/usage-loadgen ./aggregator/cmd/usage-aggregator \
  ./api/cmd/usage-api ./api/cmd/usage-demo-app ./billing-sync/cmd/usage-billing-sync

echo "== starting usage-consumer (log: $run_dir/consumer.log)"
USAGE_KAFKA_BROKERS=$USAGE_TEST_KAFKA USAGE_CLICKHOUSE_ADDR=$USAGE_TEST_CLICKHOUSE USAGE_HTTP_ADDR=$http_addr \
  "$bin/usage-consumer" >"$run_dir/consumer.log" 2>&1 &
consumer=$!
echo "== starting usage-aggregator (log: $run_dir/aggregator.log, plans: schemas/plans/plans.example.yaml)"
USAGE_AGGREGATOR_BROKERS=$USAGE_TEST_KAFKA USAGE_CLICKHOUSE_ADDR=$USAGE_TEST_CLICKHOUSE USAGE_HTTP_ADDR=${AGGREGATOR_ADDR:-127.0.0.1:9465} \
  "$bin/usage-aggregator" --plans schemas/plans/plans.example.yaml >"$run_dir/aggregator.log" 2>&1 &
aggregator=$!
echo "== starting usage-billing-sync against a fake Stripe (log: $run_dir/billing-sync.log; drift: $bin/usage-billing-sync --config billing-sync/config.demo.yaml --demo drift)"
USAGE_CLICKHOUSE_ADDR=$USAGE_TEST_CLICKHOUSE "$bin/usage-billing-sync" --config billing-sync/config.demo.yaml --demo >"$run_dir/billing-sync.log" 2>&1 &
billing=$!
stop_services() {
  local pid name
  for pid in "${demo_app:-}" "${usage_api:-}" "$billing" "$aggregator" "$consumer"; do
    [[ -n $pid ]] || continue
    name=usage-consumer
    [[ $pid == "${demo_app:-}" ]] && name=usage-demo-app
    [[ $pid == "${usage_api:-}" ]] && name=usage-api
    [[ $pid == "$aggregator" ]] && name=usage-aggregator
    [[ $pid == "$billing" ]] && name=usage-billing-sync
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      if wait "$pid"; then echo "$name stopped cleanly (exit 0)"; else echo "$name exited with $?"; fi
    fi
  done
  echo
  echo "Kafka and ClickHouse are still running. Query the data:"
  echo "  clickhouse-client --port ${CH_TCP_PORT:-19000} -d usage -q 'SELECT tenant_id, feature_type, sum(quantity), count() FROM usage_events_dedup GROUP BY tenant_id, feature_type ORDER BY tenant_id'"
  echo "Latest quota state per tenant/meter/period (compacted topic):"
  printf '  kcat -C -b %s -t usage.quota-state -e -f "%%k %%s\\n" | tail\n' "$USAGE_TEST_KAFKA"
  echo "Stop them with: make engines-stop"
}
trap stop_services EXIT

for _ in $(seq 100); do
  curl -fs "http://$http_addr/healthz" >/dev/null 2>&1 && break
  kill -0 "$consumer" 2>/dev/null || { tail -n 20 "$run_dir/consumer.log"; die "usage-consumer exited"; }
  sleep 0.2
done
agg_addr=${AGGREGATOR_ADDR:-127.0.0.1:9465}
for _ in $(seq 100); do
  curl -fs "http://$agg_addr/healthz" >/dev/null 2>&1 && break
  kill -0 "$aggregator" 2>/dev/null || { tail -n 20 "$run_dir/aggregator.log"; die "usage-aggregator exited"; }
  sleep 0.2
done
# Enforcement: ai_generation demo traffic goes through usage-demo-app, whose
# quota.Middleware answers 402 from a FREE tenant's 51st; usage-api serves
# the same decisions over HTTP (demo keys in api/keys.example.yaml).
app_addr=${DEMO_APP_ADDR:-127.0.0.1:9471}
api_addr=${USAGE_API_ADDR:-127.0.0.1:9470}
echo "== starting usage-api on $api_addr and usage-demo-app on $app_addr (logs: $run_dir/usage-api.log, $run_dir/demo-app.log)"
USAGE_QUOTA_BROKERS=$USAGE_TEST_KAFKA USAGE_HTTP_ADDR=$api_addr "$bin/usage-api" >"$run_dir/usage-api.log" 2>&1 &
usage_api=$!
"$bin/usage-demo-app" -addr "$app_addr" -brokers "$USAGE_TEST_KAFKA" >"$run_dir/demo-app.log" 2>&1 &
demo_app=$!
for _ in $(seq 100); do
  curl -fs "http://$app_addr/healthz" >/dev/null 2>&1 && break
  kill -0 "$demo_app" 2>/dev/null || { tail -n 20 "$run_dir/demo-app.log"; die "usage-demo-app exited"; }
  sleep 0.2
done
# Demo plan changes, live: two tenants move off the default FREE plan.
printf 'tenant-01|{"plan":"PRO"}\ntenant-02|{"plan":"ENTERPRISE","anchor_day":1}\n' |
  kcat -P -b "$USAGE_TEST_KAFKA" -t usage.plan-assignments -K '|'
echo
echo "   Usage dashboard: http://$http_addr/     Quota state: http://${AGGREGATOR_ADDR:-127.0.0.1:9465}/"
echo "   Metrics: http://$http_addr/metrics and http://${AGGREGATOR_ADDR:-127.0.0.1:9465}/metrics"
echo "   Enforcement (served and refused per tenant): http://$app_addr/"
echo "   usage-api: curl -s -H 'Authorization: Bearer demo-key-tenant-05' http://$api_addr/v1/quotas/tenant-05"
echo
echo "== publishing demo traffic at $rate events/s (Ctrl-C to stop)"
"$bin/usage-loadgen" -brokers "$USAGE_TEST_KAFKA" -rate "$rate" -duration "$duration" -app-url "http://$app_addr/v1/generate" || true
