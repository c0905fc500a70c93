# Shared by `up` and `test`: make the services this project needs available.
# Postgres and Redis are the machine's own (started here if they are down);
# Tansu, the Kafka-compatible broker, is installed from crates.io if missing.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

wait_for() { # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$what did not come up" >&2
    return 1
}

ensure_postgres() {
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    log "starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for Postgres pg_isready -q -h 127.0.0.1 -p 5432
}

ensure_redis() {
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
}

ensure_tansu() {
    if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        return 0
    fi
    log "installing Tansu $TANSU_VERSION, a Kafka-compatible broker, from crates.io"
    log "the first build takes about 15 minutes on 2 cores; later runs reuse ~/.cargo/bin/tansu"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
}

ensure_services() {
    ensure_postgres
    ensure_redis
    ensure_tansu
}
