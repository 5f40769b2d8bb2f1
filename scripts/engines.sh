#!/usr/bin/env bash
# Starts/stops the local Kafka and ClickHouse used by tests and prints, on stdout,
# the environment lines the Go tests read (progress goes to stderr):
#   set -a; eval "$(scripts/engines.sh start)"; set +a
#   scripts/engines.sh start|stop [--purge]|status
# Honours the knobs of scripts/kafka.sh and scripts/clickhouse.sh (KAFKA_PORT, CH_TCP_PORT, ...).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

env_lines() {
  echo "USAGE_TEST_KAFKA=127.0.0.1:${KAFKA_PORT:-19092}"
  echo "USAGE_TEST_CLICKHOUSE=127.0.0.1:${CH_TCP_PORT:-19000}"
}

case "${1:-}" in
  start)
    # ClickHouse first: it is up in well under a second, Kafka takes a few.
    "$SCRIPTS_DIR/clickhouse.sh" start >&2
    "$SCRIPTS_DIR/kafka.sh" start >&2
    env_lines
    ;;
  stop)
    rc=0
    "$SCRIPTS_DIR/kafka.sh" stop "${2:-}" >&2 || rc=1
    "$SCRIPTS_DIR/clickhouse.sh" stop "${2:-}" >&2 || rc=1
    exit "$rc"
    ;;
  status)
    rc=0
    "$SCRIPTS_DIR/clickhouse.sh" status >&2 || rc=1
    "$SCRIPTS_DIR/kafka.sh" status >&2 || rc=1
    if [[ $rc == 0 ]]; then env_lines; fi
    exit "$rc"
    ;;
  *) die "usage: $0 start|stop [--purge]|status" ;;
esac
