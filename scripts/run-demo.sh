#!/usr/bin/env bash
# make run: the whole pipeline on this machine. Installs what is missing,
# starts (or reuses) Kafka and ClickHouse on 127.0.0.1, builds and starts
# every service (usage-consumer with its dashboard on http://127.0.0.1:9464,
# usage-aggregator with the quota page on :9465, usage-stripe-fake (the
# demo's Stripe, state kept in a journal) on :9467, usage-billing-sync
# against it with /metrics on :9466, usage-api on :9470 and the demo app
# behind quota.Middleware on :9471), then publishes demo traffic with
# usage-loadgen until Ctrl-C, SIGTERM, or DEMO_DURATION (e.g. 60s).
# Every process it started is stopped on exit, and each one is listed.
#   DEMO_RATE=2000 DEMO_DURATION=0 DASHBOARD_ADDR=127.0.0.1:9464 make run
# Other addresses: AGGREGATOR_ADDR, BILLING_ADDR, STRIPE_FAKE_ADDR,
# USAGE_API_ADDR, DEMO_APP_ADDR, ALERTS_ADDR; logs go to DEMO_RUN_DIR (default
# .cache/run). The fake Stripe's journal (STRIPE_FAKE_JOURNAL, default
# .cache/run/stripe-fake.jsonl) belongs with the engines' data: billing-sync's
# ledger in ClickHouse says what was sent to it, so keep or delete both
# (make clean deletes both).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

rate=${DEMO_RATE:-2000}
duration=${DEMO_DURATION:-0}
http_addr=${DASHBOARD_ADDR:-127.0.0.1:9464}
agg_addr=${AGGREGATOR_ADDR:-127.0.0.1:9465}
billing_addr=${BILLING_ADDR:-127.0.0.1:9466}
stripe_addr=${STRIPE_FAKE_ADDR:-127.0.0.1:9467}
api_addr=${USAGE_API_ADDR:-127.0.0.1:9470}
app_addr=${DEMO_APP_ADDR:-127.0.0.1:9471}
alerts_addr=${ALERTS_ADDR:-127.0.0.1:9473}
bin="$CACHE_DIR/bin"
run_dir=${DEMO_RUN_DIR:-$CACHE_DIR/run}
journal=${STRIPE_FAKE_JOURNAL:-$CACHE_DIR/run/stripe-fake.jsonl}
mkdir -p "$bin" "$run_dir" "$(dirname "$journal")"

# Every process started here, in start order; stopped newest first.
pids=()
names=()
declare -A exit_status # pid -> status, for processes already waited for
stopped=0
# stop_one PID NAME: SIGTERM, up to 20 s for a clean exit, then SIGKILL; one
# summary line whatever happened (a Ctrl-C reaches every process of the
# terminal's group at once, so some may have exited already).
stop_one() {
  local pid=$1 name=$2 i rc=0
  if [[ -n ${exit_status[$pid]:-} ]]; then
    echo "  $name had ended (exit ${exit_status[$pid]})"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "  $name did not stop within 20 s: killed (pid $pid)"
    return
  fi
  wait "$pid" 2>/dev/null || rc=$?
  case $rc in
    0) echo "  $name stopped cleanly (exit 0)" ;;
    130 | 143) echo "  $name stopped by signal (exit $rc)" ;;
    *) echo "  $name exited with $rc (log: $run_dir/$name.log)" ;;
  esac
}
stop_all() {
  local i pid alive
  ((stopped)) && return
  stopped=1
  trap '' INT TERM # a second Ctrl-C must not cut the clean stop short
  ((${#pids[@]})) || return 0
  echo
  echo "== stopping ${#pids[@]} processes"
  if [[ ${caught:-} == INT ]]; then
    # Ctrl-C reached every process of the terminal's group already: let
    # them finish their own shutdown (up to 5 s) before any SIGTERM, which
    # would kill one that has stopped listening for signals mid-flush.
    for ((i = 0; i < 50; i++)); do
      alive=0
      for pid in "${pids[@]}"; do
        [[ -n ${exit_status[$pid]:-} ]] && continue
        kill -0 "$pid" 2>/dev/null && alive=1 && break
      done
      ((alive)) || break
      sleep 0.1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${pids[i]}" "${names[i]}"
  done
  echo
  echo "Kafka and ClickHouse are still running. Query the data:"
  echo "  clickhouse-client --port ${CH_TCP_PORT:-19000} -d usage -q 'SELECT tenant_id, feature_type, sum(quantity), count() FROM usage_events_dedup GROUP BY tenant_id, feature_type ORDER BY tenant_id'"
  echo "Latest quota state per tenant/meter/period (compacted topic):"
  printf '  kcat -C -b %s -t usage.quota-state -e -f "%%k %%s\\n" | tail\n' "$USAGE_TEST_KAFKA"
  echo "What Stripe was sent: start the fake Stripe again (its journal keeps it) and run drift:"
  echo "  $bin/usage-stripe-fake --addr $stripe_addr --journal $journal &"
  echo "  $drift_cmd"
  echo "Stop the engines with: make engines-stop"
}
# EXIT covers errors too; on a signal, exit so that EXIT runs (once).
trap stop_all EXIT
trap 'caught=INT; exit 130' INT
trap 'caught=TERM; exit 143' TERM

# start NAME COMMAND...: in the background, output to $run_dir/NAME.log
# (NAME=usage-loadgen: to this terminal, it prints the rates).
start() {
  local name=$1
  shift
  if [[ $name == usage-loadgen ]]; then
    "$@" &
  else
    "$@" >"$run_dir/$name.log" 2>&1 &
  fi
  pids+=($!)
  names+=("$name")
}
# wait_healthy NAME ADDR: until http://ADDR/healthz answers (20 s).
wait_healthy() {
  local name=$1 addr=$2 pid=${pids[-1]}
  for _ in $(seq 100); do
    curl -fs "http://$addr/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$run_dir/$name.log"; die "$name exited"; }
    sleep 0.2
  done
  tail -n 20 "$run_dir/$name.log"
  die "$name did not answer on http://$addr/healthz within 20 s"
}

# A port already taken (another make run?) would make wait_healthy below
# talk to someone else's service: refuse at once, naming it.
for spec in "DASHBOARD_ADDR=$http_addr" "AGGREGATOR_ADDR=$agg_addr" "BILLING_ADDR=$billing_addr" \
  "STRIPE_FAKE_ADDR=$stripe_addr" "USAGE_API_ADDR=$api_addr" "DEMO_APP_ADDR=$app_addr"; do
  addr=${spec#*=}
  (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null &&
    die "${spec%%=*}: $addr is already in use (another make run?); stop it or set ${spec%%=*} to a free address"
done

"$SCRIPTS_DIR/deps.sh" kafka clickhouse kcat
env_lines=$("$SCRIPTS_DIR/engines.sh" start)
eval "$env_lines"
ch=$USAGE_TEST_CLICKHOUSE
drift_cmd="USAGE_CLICKHOUSE_ADDR=$ch $bin/usage-billing-sync --config billing-sync/config.demo.yaml --demo --stripe-url http://$stripe_addr drift"
echo "== building"
# In the background, so that a signal is handled at once, not after the build.
go build -o "$bin/" ./consumer/cmd/usage-consumer ./producer/cmd/usage-loadgen ./aggregator/cmd/usage-aggregator \
  ./alerts/cmd/usage-alerts ./api/cmd/usage-api ./api/cmd/usage-demo-app ./billing-sync/cmd/usage-billing-sync ./billing-sync/cmd/usage-stripe-fake &
build=$!
trap 'kill -TERM $build 2>/dev/null; exit 130' INT
trap 'kill -TERM $build 2>/dev/null; exit 143' TERM
wait "$build"
trap 'caught=INT; exit 130' INT
trap 'caught=TERM; exit 143' TERM

echo "== starting usage-consumer (log: $run_dir/usage-consumer.log)"
start usage-consumer env USAGE_KAFKA_BROKERS="$USAGE_TEST_KAFKA" USAGE_CLICKHOUSE_ADDR="$ch" USAGE_HTTP_ADDR="$http_addr" \
  "$bin/usage-consumer"
wait_healthy usage-consumer "$http_addr"
echo "== starting usage-aggregator (log: $run_dir/usage-aggregator.log, plans: schemas/plans/plans.example.yaml)"
start usage-aggregator env USAGE_AGGREGATOR_BROKERS="$USAGE_TEST_KAFKA" USAGE_CLICKHOUSE_ADDR="$ch" USAGE_HTTP_ADDR="$agg_addr" \
  "$bin/usage-aggregator" --plans schemas/plans/plans.example.yaml
wait_healthy usage-aggregator "$agg_addr"
# Threshold alerts to usage.alerts; webhooks too when ALERTS_WEBHOOK_URL and
# ALERTS_WEBHOOK_SECRET are set (see alerts/README.md).
echo "== starting usage-alerts (log: $run_dir/usage-alerts.log)"
start usage-alerts env USAGE_EMITTER_BROKERS="$USAGE_TEST_KAFKA" USAGE_WEBHOOK_BROKERS="$USAGE_TEST_KAFKA" \
  USAGE_CLICKHOUSE_ADDR="$ch" USAGE_HTTP_ADDR="$alerts_addr" USAGE_WEBHOOK_URL="${ALERTS_WEBHOOK_URL:-}" \
  USAGE_WEBHOOK_SECRET="${ALERTS_WEBHOOK_SECRET:-}" "$bin/usage-alerts" --plans schemas/plans/plans.example.yaml
wait_healthy usage-alerts "$alerts_addr"
echo "== starting usage-stripe-fake on http://$stripe_addr (log: $run_dir/usage-stripe-fake.log, state: $journal)"
start usage-stripe-fake env USAGE_CLICKHOUSE_ADDR="$ch" \
  "$bin/usage-stripe-fake" --addr "$stripe_addr" --journal "$journal" --billing-config billing-sync/config.demo.yaml
wait_healthy usage-stripe-fake "$stripe_addr"
echo "== starting usage-billing-sync against it (log: $run_dir/usage-billing-sync.log)"
start usage-billing-sync env USAGE_CLICKHOUSE_ADDR="$ch" \
  "$bin/usage-billing-sync" --config billing-sync/config.demo.yaml --demo --stripe-url "http://$stripe_addr" --http "$billing_addr"
wait_healthy usage-billing-sync "$billing_addr"
# Enforcement: ai_generation demo traffic goes through usage-demo-app, whose
# quota.Middleware answers 402 from a FREE tenant's 51st; usage-api serves
# the same decisions over HTTP.
echo "== starting usage-api on $api_addr and usage-demo-app on $app_addr (logs: $run_dir/usage-api.log, $run_dir/usage-demo-app.log)"
start usage-api env USAGE_QUOTA_BROKERS="$USAGE_TEST_KAFKA" USAGE_CLICKHOUSE_ADDR="$ch" USAGE_HTTP_ADDR="$api_addr" "$bin/usage-api" --demo
wait_healthy usage-api "$api_addr"
start usage-demo-app "$bin/usage-demo-app" -addr "$app_addr" -brokers "$USAGE_TEST_KAFKA" -outbox-dir "$run_dir/demo-app-outbox"
wait_healthy usage-demo-app "$app_addr"
# Demo plan changes, live: two tenants move off the default FREE plan.
printf 'tenant-01|{"plan":"PRO"}\ntenant-02|{"plan":"ENTERPRISE","anchor_day":1}\n' |
  kcat -P -b "$USAGE_TEST_KAFKA" -t usage.plan-assignments -K '|'
echo
echo "   Usage dashboard: http://$http_addr/     Quota state: http://$agg_addr/"
echo "   Enforcement (served and refused per tenant): http://$app_addr/"
echo "   Tenant usage pages: http://$api_addr/usage/tenant-05 (sign in with demo-key-tenant-05)   Admin: http://$api_addr/admin (demo-admin-key)"
echo "   Metrics: http://$http_addr/metrics (consumer)  http://$agg_addr/metrics (aggregator)"
echo "            http://$api_addr/metrics (usage-api)  http://$billing_addr/metrics (billing-sync)"
echo "            http://$stripe_addr/metrics (fake Stripe)  http://$alerts_addr/metrics (usage-alerts)"
echo "   Threshold alerts (once per tenant, meter, period and line): kcat -C -b $USAGE_TEST_KAFKA -t usage.alerts -e"
echo "   Demo API keys: api/keys.example.yaml (stored hashed; the keys are demo-key-<tenant> and demo-admin-key)"
echo "   usage-api: curl -s -H 'Authorization: Bearer demo-key-tenant-05' http://$api_addr/v1/quotas/tenant-05"
echo "   Fake Stripe (what billing-sync sent, kept across restarts): http://$stripe_addr/v1/ (journal: $journal)"
echo "   Billing drift, ours vs that Stripe (hours are billed once they end):"
echo "     $drift_cmd"
echo
echo "== publishing demo traffic at $rate events/s (Ctrl-C to stop)"
start usage-loadgen "$bin/usage-loadgen" -brokers "$USAGE_TEST_KAFKA" -rate "$rate" -duration "$duration" -app-url "http://$app_addr/v1/generate"
loadgen=${pids[-1]}
# wait returns at once when a trapped signal arrives (a foreground command
# would delay the trap until it ended).
rc=0
wait "$loadgen" || rc=$?
exit_status[$loadgen]=$rc
