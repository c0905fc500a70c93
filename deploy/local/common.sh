# Shared by `up`, `test` and `down`: make what this project needs available on
# this machine, installing it first when it is missing.
#
# - Debian packages: Postgres, Redis, a JRE and Maven (for Apache Kafka), and
#   the headers rdkafka's TLS/SASL build links (libssl-dev, libsasl2-dev).
#   Installed with apt-get when we are root; otherwise we say what to install.
# - Postgres: whatever listens on 127.0.0.1:5432 is used. Otherwise a cluster
#   owned by the project is created under the state directory, with `trust`
#   auth for the superuser `postgres` on 127.0.0.1 only (the system cluster and
#   its config are left alone).
# - Redis: whatever listens on 127.0.0.1:6379, else one started here.
# - Apache Kafka: the broker's jars are fetched once by Maven, from the pinned
#   POM in deploy/local/kafka/, into the cache directory; whatever listens on
#   127.0.0.1:9092 is used, else a single KRaft node is formatted and started.
#
# Services started here keep running (a second run reuses them);
# `deploy/local/down` stops them.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/local/kafka/pom.xml")
CACHE_DIR=${NOVA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nova-streaming}
if [ "$(id -u)" = 0 ]; then
    # Postgres runs as the `postgres` user, who cannot enter /root.
    STATE_DIR=${NOVA_STATE_DIR:-/var/lib/nova-streaming}
else
    STATE_DIR=${NOVA_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/nova-streaming}
fi
# The tests and the bench find the jars here too (testkit reads KAFKA_LIBS).
export KAFKA_LIBS=${KAFKA_LIBS:-$CACHE_DIR/kafka-$KAFKA_VERSION/libs}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
    local what=$1 seconds=$2; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$what did not come up within ${seconds}s" >&2
    return 1
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# apt_install DESCRIPTION PACKAGE...: installs the packages dpkg lacks.
apt_updated=
apt_install() {
    local what=$1; shift
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} ($what)." >&2
        echo "install them (sudo apt-get install ${missing[*]}) or see the README's 'Without root'." >&2
        return 1
    fi
    log "installing ${missing[*]} ($what) from Debian's packages, about a minute"
    local start=$SECONDS
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed in $((SECONDS - start))s"
}

ensure_packages() {
    local packages=(postgresql redis-server libssl-dev libsasl2-dev pkg-config)
    command -v java >/dev/null || packages+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || packages+=(maven)
    command -v curl >/dev/null || packages+=(curl)
    apt_install "Postgres, Redis, a JRE and Maven for Kafka, TLS/SASL headers" "${packages[@]}"
}

pg_bin() { # the newest installed Postgres server's bin directory
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# as_pg COMMAND...: runs a Postgres server command as the cluster's owner.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
    local bin data=$STATE_DIR/postgres
    bin=$(pg_bin)
    [ -n "$bin" ] || { echo "no Postgres server installed" >&2; return 1; }
    mkdir -p "$STATE_DIR"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "creating the project's Postgres cluster in $data (trust auth for 'postgres' on 127.0.0.1)"
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown postgres: "$data"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 5432
unix_socket_directories = '$data'
# Tests run many databases and pools at once.
max_connections = 400
shared_buffers = 256MB
CONF
    fi
    log "starting Postgres (log in $data/server.log)"
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
    wait_for Postgres 30 pg_isready -q -h 127.0.0.1 -p 5432
}

ensure_redis() {
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
    log "starting Redis on 127.0.0.1:6379"
    mkdir -p "$STATE_DIR"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$STATE_DIR" --pidfile "$STATE_DIR/redis.pid" --logfile "$STATE_DIR/redis.log"
    wait_for Redis 20 redis-cli -h 127.0.0.1 -p 6379 ping
}

ensure_kafka_jars() {
    [ -f "$KAFKA_LIBS/.complete" ] && return 0
    log "fetching Apache Kafka $KAFKA_VERSION (broker and tools, ~55 MB of jars from Maven Central, ~30 s) into $KAFKA_LIBS"
    local start=$SECONDS
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -f "$ROOT/deploy/local/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
    log "fetched in $((SECONDS - start))s"
}

# kafka_java CLASS ARGS...: a Kafka main class on the cached jars.
kafka_java() {
    java -Xmx${KAFKA_HEAP:-512m} -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.yaml" \
        -cp "$KAFKA_LIBS/*" "$@"
}

ensure_kafka() {
    ensure_kafka_jars
    if listening 9092; then return 0; fi
    local dir=$STATE_DIR/kafka
    mkdir -p "$dir"
    {
        cat "$ROOT/deploy/local/kafka/server.properties"
        cat <<PROPS
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092
log.dirs=$dir/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
    } >"$dir/server.properties"
    if [ ! -f "$dir/data/meta.properties" ]; then
        log "formatting Kafka's KRaft storage in $dir/data"
        kafka_java kafka.tools.StorageTool format --ignore-formatted \
            -t "$(kafka_java kafka.tools.StorageTool random-uuid)" -c "$dir/server.properties" >/dev/null
    fi
    log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:9092 (log in $dir/server.log, ~10 s)"
    setsid nohup java -Xmx${KAFKA_HEAP:-512m} -Xms${KAFKA_HEAP:-512m} \
        -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.yaml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/kafka.pid"
    wait_for Kafka 90 grep -q 'Kafka Server started' "$dir/server.log"
}

# create_topic NAME PARTITIONS: on the local broker, if it does not exist yet.
create_topic() {
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 \
        --create --if-not-exists --topic "$1" --partitions "$2" --replication-factor 1 >/dev/null
}

ensure_build_tools() {
    command -v cargo >/dev/null || {
        echo "cargo not found: install Rust (https://rustup.rs) first" >&2
        return 1
    }
}

ensure_services() {
    ensure_packages
    ensure_build_tools
    ensure_postgres
    ensure_redis
    ensure_kafka
}
