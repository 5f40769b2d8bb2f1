#!/usr/bin/env bash
# make test: installs what is missing, starts the real engines on 127.0.0.1,
# checks the SQL on a current ClickHouse engine (chdb), runs every Go test
# of the workspace against the engines, and stops them. The output ends with
# go test's own summary lines.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

"$SCRIPTS_DIR/deps.sh"

echo "== SQL migrations on a current ClickHouse engine (chdb)"
"$VENV_DIR/bin/python" "$SCRIPTS_DIR/check_sql_chdb.py" schemas/migrations

echo "== starting Kafka and ClickHouse"
already_running=0
"$SCRIPTS_DIR/engines.sh" status >/dev/null 2>&1 && already_running=1
env_lines=$("$SCRIPTS_DIR/engines.sh" start)
set -a
eval "$env_lines"
set +a
# Leave the engines as we found them: stop them only if this run started them
# (a developer's `make run` may be using them). Quietly, so the output
# still ends with go test's summary.
if [[ $already_running == 0 && ${USAGE_KEEP_ENGINES:-} != 1 ]]; then
  trap '"$SCRIPTS_DIR/engines.sh" stop >"$CACHE_DIR/engines-stop.log" 2>&1 || true' EXIT
fi

# stripe-mock for billing-sync's tests (left running, like a developer's engines).
# (A failed start must fail the run: eval "$(...)" would hide its exit code.)
stripe_env=$("$SCRIPTS_DIR/stripe-mock.sh" start)
eval "$stripe_env"
export USAGE_TEST_STRIPE_MOCK

mapfile -t pkgs < <(workspace_pkgs)
echo "== go vet"
go vet "${pkgs[@]}"

# The schemas' differential test must not skip its Python jsonschema check here.
export USAGE_REQUIRE_PYTHON_SCHEMA_CHECK=1
echo "== go test (real Kafka at $USAGE_TEST_KAFKA, ClickHouse at $USAGE_TEST_CLICKHOUSE)"
go test -count=1 -timeout 25m "${pkgs[@]}" "$@"
