#!/usr/bin/env bash
# usage-api POST /v1/check under wrk on loopback beside a bare net/http
# handler (the floor) and the /v1/check/batch row, in interleaved pairs
# (api/bench/wrkbench; api/README.md "Figures"). scripts/bench.sh runs it
# last; alone: api/bench/run.sh. It uses the shared broker (started if
# need be) and only ports BENCH_API_PORT (9479) and BENCH_FLOOR_PORT (9478).
# BENCH_API_PAIRS (3) pairs; JSON records to BENCH_API_OUT
# (.cache/bench/api.jsonl); binaries in BENCH_BIN_DIR (.cache/bin).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
cd "$REPO_ROOT"
"$SCRIPTS_DIR/deps.sh" wrk
if [[ -z ${USAGE_TEST_KAFKA:-} ]]; then
  env_lines=$("$SCRIPTS_DIR/engines.sh" start)
  set -a
  eval "$env_lines"
  set +a
fi
bin=${BENCH_BIN_DIR:-$CACHE_DIR/bin}
out=${BENCH_API_OUT:-$CACHE_DIR/bench/api.jsonl}
echo "== usage-api POST /v1/check under wrk on loopback beside a bare net/http handler (the floor) and /v1/check/batch, paced to about 10k checks/s; ${BENCH_API_PAIRS:-3} interleaved pairs (JSON: $out)"
go build -o "$bin/" ./api/cmd/usage-api ./api/bench/wrkbench
api_addr=127.0.0.1:${BENCH_API_PORT:-9479}
mkdir -p "$CACHE_DIR/run"
# A broker no aggregator has run against has none of the topics the demo reads.
"$bin/wrkbench" topics --kafka "$USAGE_TEST_KAFKA"
USAGE_QUOTA_BROKERS=$USAGE_TEST_KAFKA USAGE_HTTP_ADDR=$api_addr USAGE_LOG_LEVEL=warn \
  "$bin/usage-api" --demo >"$CACHE_DIR/run/usage-api-bench.log" 2>&1 &
api_pid=$!
# wrkbench waits for a fresh decision, captures usage-api's answer for the
# floor to write byte for byte, then runs wrk (api/bench/check.lua, then
# batch.lua) against each in turn; a run with socket errors or non-2xx
# answers shows them.
api_status=0
"$bin/wrkbench" --api "$api_addr" --api-pid "$api_pid" --floor-addr "127.0.0.1:${BENCH_FLOOR_PORT:-9478}" \
  --batch-script api/bench/batch.lua --pairs "${BENCH_API_PAIRS:-3}" --out "$out" --label "$(date -u +%FT%TZ)" || api_status=$?
kill -TERM "$api_pid"
wait "$api_pid" || true
if [[ $api_status != 0 ]]; then die "wrkbench failed (usage-api log: $CACHE_DIR/run/usage-api-bench.log)"; fi
