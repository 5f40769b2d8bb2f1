#!/usr/bin/env bash
# Runs stripe-mock (Stripe's official mock, v0.190.0: meters and legacy usage
# records) on 127.0.0.1 only.
#   scripts/stripe-mock.sh start|stop|status
# start prints `USAGE_TEST_STRIPE_MOCK=http://127.0.0.1:PORT` for eval.
# Knobs: STRIPE_MOCK_PORT (12111), STRIPE_MOCK_HTTPS_PORT (12112).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${STRIPE_MOCK_PORT:-12111}"
HTTPS_PORT="${STRIPE_MOCK_HTTPS_PORT:-12112}"
DIR="$CACHE_DIR/run/stripe-mock-$PORT"
PIDFILE="$DIR/stripe-mock.pid"
LOGFILE="$DIR/stripe-mock.log"
BIN="$CACHE_DIR/bin/stripe-mock"

running_pid() { pid_alive "$PIDFILE" "stripe-mock"; }

case ${1:-} in
  start)
    [[ -x $BIN ]] || "$SCRIPTS_DIR/deps.sh" stripe-mock
    mkdir -p "$DIR"
    if ! running_pid >/dev/null; then
      port_in_use "$PORT" && die "port $PORT is in use by something else (set STRIPE_MOCK_PORT)"
      # -http-addr/-https-addr, never -http-port: that one binds all interfaces.
      nohup "$BIN" -http-addr "127.0.0.1:$PORT" -https-addr "127.0.0.1:$HTTPS_PORT" >"$LOGFILE" 2>&1 &
      pid=$!
      echo "$pid" >"$PIDFILE"
      for _ in $(seq 1 100); do
        port_in_use "$PORT" && break
        # kill -0, not running_pid: until nohup has exec'd, the child's
        # command line is still the shell's.
        kill -0 "$pid" 2>/dev/null || { show_log_tail "$LOGFILE"; die "stripe-mock exited"; }
        sleep 0.1
      done
      port_in_use "$PORT" || { show_log_tail "$LOGFILE"; die "stripe-mock did not start"; }
      log "stripe-mock listening on 127.0.0.1:$PORT"
    fi
    echo "USAGE_TEST_STRIPE_MOCK=http://127.0.0.1:$PORT"
    ;;
  stop)
    if pid=$(running_pid); then stop_pid "$pid" stripe-mock 10; fi
    ;;
  status)
    if pid=$(running_pid); then echo "stripe-mock running (pid $pid) on 127.0.0.1:$PORT"; else echo "stripe-mock not running"; exit 1; fi
    ;;
  *) die "usage: $0 start|stop|status" ;;
esac
