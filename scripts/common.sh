# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared settings and helpers for scripts/*.sh. Sourced, never run directly.

# Repo root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS_DIR="$REPO_ROOT/scripts"
# Everything downloaded or generated lives here (git-ignored).
CACHE_DIR="${USAGE_CACHE_DIR:-$REPO_ROOT/.cache}"

# Stay on 3.9.x: kafka-go v0.4.51 uses JoinGroup v1, which Kafka 4.x removed.
KAFKA_VERSION="3.9.1"
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_LIBS_MARKER="$CACHE_DIR/kafka-$KAFKA_VERSION/.complete"

CHDB_VERSION="4.4.0"
VENV_DIR="$CACHE_DIR/venv"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# pid_alive PIDFILE PATTERN: prints the pid and succeeds when the pid in PIDFILE is
# alive and its command line contains PATTERN (guards against pid reuse).
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# stop_pid PID NAME [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 timeout=${3:-30} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "$name stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name did not exit within ${timeout}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "$name (pid $pid) survived SIGKILL"
}

# port_in_use PORT: something already listens on 127.0.0.1:PORT (or any address).
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# show_log_tail FILE...: help diagnose a failed start.
show_log_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    log "---- last lines of $f ----"
    tail -n 40 "$f" >&2
  done
}

# engine_main NAME DIR ADDR COMMAND...: the commands kafka.sh and clickhouse.sh
# share. The caller defines cmd_start, running_pid, answering and wait_ready,
# and PIDFILE.
# shellcheck disable=SC2153 # PIDFILE is set by the sourcing script
engine_main() {
  local name=$1 dir=$2 addr=$3 pid
  shift 3
  case "${1:-}" in
    start) cmd_start ;;
    stop | reset)
      if pid=$(running_pid); then
        stop_pid "$pid" "$name" 30
      fi
      rm -f "$PIDFILE"
      if [[ $1 == reset || ${2:-} == --purge ]]; then
        rm -rf "$dir"
        log "$name dir $dir removed"
      fi
      ;;
    status)
      if pid=$(running_pid) && answering; then
        echo "$name running on $addr (pid $pid)"
        return 0
      fi
      echo "$name not running on $addr"
      return 1
      ;;
    wait)
      running_pid >/dev/null || die "$name is not running (no live pid in $PIDFILE)"
      wait_ready
      ;;
    *) die "usage: $0 start|stop [--purge]|reset|status|wait" ;;
  esac
}

# workspace_pkgs: one ./module/... pattern per module that go.work uses, so a
# new module is vetted, tested and linted as soon as it joins the workspace.
workspace_pkgs() {
  awk '/^use *\(/ {inside = 1; next} inside && /\)/ {inside = 0} inside && NF {sub(/^\.\//, "", $1); print "./" $1 "/..."}' "$REPO_ROOT/go.work"
}
