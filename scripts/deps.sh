#!/usr/bin/env bash
# Installs what the local engines and SQL checks need, skipping what is present.
#   scripts/deps.sh [kafka] [clickhouse] [chdb] [kcat] [examples] [promtool] ...   (no argument = all)
# Prints one line per thing it installs; silent when everything is there.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mkdir -p "$CACHE_DIR"
# Serialise concurrent callers (e.g. several `kafka.sh start` at once).
exec 9>"$CACHE_DIR/.deps.lock"
flock 9

APT_UPDATED=0

apt_missing() {
  local p missing=()
  for p in "$@"; do
    if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  printf '%s\n' "${missing[@]}"
}

# apt_install PKG...: installs the missing ones; `apt-get update` at most once.
apt_install() {
  local missing
  mapfile -t missing < <(apt_missing "$@")
  [[ ${#missing[@]} -gt 0 && -n ${missing[0]} ]] || return 0
  local aptlog="$CACHE_DIR/apt.log"
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -q >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  echo "deps: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${APT_NO_RECOMMENDS:+--no-install-recommends} "${missing[@]}" >>"$aptlog" 2>&1 \
    || { tail -n 30 "$aptlog" >&2; die "apt-get install ${missing[*]} failed"; }
}

# The Debian package enables a system service on the default ports (9000/8123);
# we run our own instances, so make sure that one is neither running nor enabled.
stop_system_clickhouse() {
  # `systemctl disable` also works without a running systemd (it only edits links).
  if command -v systemctl >/dev/null; then
    systemctl disable clickhouse-server >/dev/null 2>&1 || true
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl stop clickhouse-server >/dev/null 2>&1 || true
  fi
  # Never use /etc/init.d/clickhouse-server stop: its start-stop-daemon matches by
  # executable only and SIGKILLs our own instances too. Match the system config instead.
  local pid
  for pid in $(pgrep -f -- '--config=/etc/clickhouse-server/config.xml' || true); do
    echo "deps: stopping system clickhouse-server (pid $pid)"
    stop_pid "$pid" clickhouse-server 30
  done
}

dep_clickhouse() {
  apt_install clickhouse-server clickhouse-client
  stop_system_clickhouse
}

dep_kcat() {
  apt_install kcat
}

dep_compose() { # reads and validates docker-compose.yml (no Docker engine needed): cluster/ tests
  command -v docker-compose >/dev/null || APT_NO_RECOMMENDS=1 apt_install docker-compose
}

dep_wrk() { # HTTP load generator for usage-api in make bench
  apt_install wrk
}

dep_chromium() { # headless browser for usage-api's page tests (chromedp drives it)
  APT_NO_RECOMMENDS=1 apt_install chromium
}

# promtool checks and unit-tests deploy/prometheus/rules.yml (ops/deploycheck). Debian ships
# it in the prometheus package: only the tool is wanted, so no recommended node exporter, and
# the server the package enables stays off.
dep_promtool() {
  command -v promtool >/dev/null && return 0
  APT_NO_RECOMMENDS=1 apt_install prometheus
  if command -v systemctl >/dev/null; then
    systemctl disable prometheus >/dev/null 2>&1 || true
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl stop prometheus >/dev/null 2>&1 || true
  fi
}

dep_kafka() {
  local want="kafka_2.13-$KAFKA_VERSION"
  if [[ -f $KAFKA_LIBS_MARKER && $(<"$KAFKA_LIBS_MARKER") == "$want" ]] \
    && compgen -G "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    return 0
  fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  echo "deps: Apache Kafka $KAFKA_VERSION jars from Maven Central -> $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS" "$KAFKA_LIBS_MARKER"
  mkdir -p "$KAFKA_LIBS"
  local mvnlog="$CACHE_DIR/mvn-kafka.log"
  mvn -q -B -f "$SCRIPTS_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" \
    >"$mvnlog" 2>&1 || { tail -n 30 "$mvnlog" >&2; die "mvn could not resolve Kafka $KAFKA_VERSION"; }
  [[ -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka jar missing after mvn"
  # Written last: its presence means the libs dir is complete.
  printf '%s\n' "$want" >"$KAFKA_LIBS_MARKER"
}

# Python jsonschema (+ rfc3339-validator, without which it skips format
# date-time) checks the published JSON Schemas in schemas/differential_test.go.
JSONSCHEMA_PINS=(jsonschema==4.26.0 rfc3339-validator==0.1.4)

dep_chdb() {
  local py="$VENV_DIR/bin/python"
  if [[ -x $py ]] && [[ $("$py" -c 'import importlib.metadata as m; print(m.version("chdb"), m.version("jsonschema"), m.version("rfc3339-validator"))' 2>/dev/null || true) == "$CHDB_VERSION 4.26.0 0.1.4" ]]; then
    return 0
  fi
  if [[ ! -x $py ]]; then
    echo "deps: python venv at $VENV_DIR"
    local base="${PYTHON:-python3}"
    "$base" -m venv "$VENV_DIR" 2>/dev/null || {
      apt_install python3-venv
      /usr/bin/python3 -m venv "$VENV_DIR"
    }
  fi
  echo "deps: pip install chdb==$CHDB_VERSION ${JSONSCHEMA_PINS[*]}"
  local piplog="$CACHE_DIR/pip-chdb.log"
  "$py" -m pip install -q --disable-pip-version-check "chdb==$CHDB_VERSION" "${JSONSCHEMA_PINS[@]}" >"$piplog" 2>&1 \
    || { tail -n 30 "$piplog" >&2; die "pip install chdb==$CHDB_VERSION ${JSONSCHEMA_PINS[*]} failed"; }
}

# stripe-mock v0.190.0: the last release serving both meters and legacy usage records.
dep_stripe_mock() {
  [[ -x $CACHE_DIR/bin/stripe-mock ]] && return 0
  echo "deps: go install github.com/stripe/stripe-mock@v0.190.0"
  GOBIN="$CACHE_DIR/bin" go install github.com/stripe/stripe-mock@v0.190.0
}

# The example publishers in examples/ (run by its Go tests): confluent-kafka
# into the venv beside jsonschema, kafkajs + ajv into examples/node/node_modules
# (git-ignored) from the lock file, kafka-clients + networknt from Maven
# Central into .cache/examples-java/libs. Each is redone when its pins change.
EXAMPLES_PY_PINS=(confluent-kafka==2.16.1)

dep_examples() {
  dep_chdb # the venv, with jsonschema and rfc3339-validator
  local py="$VENV_DIR/bin/python" log="$CACHE_DIR/deps-examples.log"
  if [[ $("$py" -c 'import importlib.metadata as m; print(m.version("confluent-kafka"))' 2>/dev/null || true) != "${EXAMPLES_PY_PINS[0]#*==}" ]]; then
    echo "deps: pip install ${EXAMPLES_PY_PINS[*]}"
    "$py" -m pip install -q --disable-pip-version-check "${EXAMPLES_PY_PINS[@]}" >"$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "pip install ${EXAMPLES_PY_PINS[*]} failed"; }
  fi
  local node_dir="$REPO_ROOT/examples/node" stamp want
  command -v npm >/dev/null || apt_install nodejs npm
  stamp="$node_dir/node_modules/.usagemeter-lock"
  want=$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    echo "deps: npm ci in examples/node"
    (cd "$node_dir" && npm ci --no-audit --no-fund) >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "npm ci in examples/node failed"; }
    printf '%s\n' "$want" >"$stamp"
  fi
  local java_dir="$CACHE_DIR/examples-java"
  command -v mvn >/dev/null || apt_install maven
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless # java Publish.java compiles in memory
  want=$(sha256sum "$REPO_ROOT/examples/java/pom.xml" | cut -d' ' -f1)
  if [[ ! -f $java_dir/.complete || $(<"$java_dir/.complete") != "$want" ]]; then
    echo "deps: examples/java jars from Maven Central -> $java_dir/libs"
    rm -rf "$java_dir"
    mkdir -p "$java_dir"
    mvn -q -B -f "$REPO_ROOT/examples/java/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$java_dir/libs" >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "mvn could not resolve examples/java/pom.xml"; }
    printf '%s\n' "$want" >"$java_dir/.complete" # written last: the libs dir is complete
  fi
}

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(kcat clickhouse kafka chdb stripe-mock wrk examples promtool compose chromium)
for part in "${parts[@]}"; do
  case $part in
    kafka | clickhouse | chdb | kcat | wrk | examples | promtool | compose | chromium) "dep_$part" ;;
    stripe-mock) dep_stripe_mock ;;
    *) die "unknown part '$part' (want: kafka clickhouse chdb kcat stripe-mock wrk examples promtool compose chromium)" ;;
  esac
done
