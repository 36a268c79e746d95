#!/usr/bin/env bash
# Processing rate against intake's rate in the same run, with the shipped rules.
#
#   [PROCESSORS=N] [RATE=N] [SWITCHBOARD_BIN=PATH] bench/processing.sh DATABASE [INSTANCES] [SECONDS]
#
# DATABASE is a PostgreSQL server URL without database (a fresh database is created and dropped,
# e.g. postgres://postgres@127.0.0.1:5432), or `sqlite` (a fresh file; one instance).
# INSTANCES (default 1) instances share the database; `examples/load.rs` posts to all of them for
# SECONDS (default 10), as fast as 64 connections go or at RATE per second. When the queue has
# drained, it prints from the database: notifications accepted per second (first to last receive
# time), events evaluated per second while intake ran and after it (the backlog, drained alone),
# rule failures, and any unexpected warnings the instances logged. PROCESSORS sets `processors`
# on every instance (default: the built-in default); SWITCHBOARD_BIN runs another build (to
# compare). Needs the release build: cargo build --release --bin switchboard --example load
set -euo pipefail

database=${1:?usage: [PROCESSORS=N] bench/processing.sh DATABASE [INSTANCES] [SECONDS]}
instances=${2:-1}
seconds=${3:-10}

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SWITCHBOARD_BIN:-$root/target/release/switchboard}
load=$root/target/release/examples/load
[[ -x $bin && -x $load ]] || {
    echo "build first: cargo build --release --bin switchboard --example load" >&2
    exit 1
}
work=$(mktemp -d)
token=bench-ingest-token
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $database == postgres* ]]; then
        psql -q "$database/postgres" -c "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ $database == postgres* ]]; then
    name=sb_bench_$$
    psql -q "$database/postgres" -c "CREATE DATABASE $name"
    url=$database/$name
    sql() { psql -At "$url" -c "$1"; }
elif [[ $database == sqlite ]]; then
    instances=1
    url=sqlite://$work/sb.db
    sql() { sqlite3 "$work/sb.db" "$1"; }
else
    echo "DATABASE must be postgres://… or sqlite" >&2
    exit 1
fi

cat >"$work/switchboard.toml" <<EOF
[rule_settings]
ops_email = "ops@example.com"
supervisor_email = "supervisor@example.com"
EOF
if [[ -n ${PROCESSORS:-} ]]; then
    sed -i "1i processors = $PROCESSORS" "$work/switchboard.toml"
fi

urls=()
for i in $(seq 1 "$instances"); do
    mkdir -p "$work/$i"
    (cd "$work/$i" && SWITCHBOARD_INGEST_TOKEN=$token SWITCHBOARD_ADMIN_TOKEN=bench-admin-token \
        exec "$bin" serve --config "$work/switchboard.toml" --listen 127.0.0.1:0 \
        --database "$url" --rules "$root/rules" 2>"$work/$i/log") &
    pids+=($!)
done
# Each instance logs the address it chose ("listening on 127.0.0.1:PORT").
for i in $(seq 1 "$instances"); do
    addr=
    for _ in $(seq 1 300); do
        addr=$(grep -o 'listening on [0-9.:]*' "$work/$i/log" | head -1 | cut -d' ' -f3 || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || { echo "instance $i did not start:"; cat "$work/$i/log"; exit 1; }
    urls+=("http://$addr")
done
list=$(IFS=,; echo "${urls[*]}")

echo "== $instances instance(s), processors ${PROCESSORS:-default}, load for ${seconds}s"
"$load" --url "$list" --token "$token" --seconds "$seconds" ${RATE:+--rate "$RATE"} | tail -n 3
echo "== waiting for the queue to drain"
for _ in $(seq 1 600); do
    [[ $(sql "SELECT COUNT(*) FROM event_queue") == 0 ]] && break
    sleep 1
done
# Intake's rate; processing's while intake ran (to the last receive time) and after (the backlog
# drained alone); rule failures (e.g. a counter the store could not answer) should be none.
sql "SELECT 'accepted:             ' || COUNT(*) || ' events, ' || ROUND(COUNT(*) * 1000.0 / NULLIF(MAX(received_at) - MIN(received_at), 0)) || '/s' FROM events"
sql "SELECT 'evaluated during it:  ' || COUNT(*) || ' events, ' || ROUND(COUNT(*) * 1000.0 / NULLIF((SELECT MAX(received_at) - MIN(received_at) FROM events), 0)) || '/s' FROM evaluations WHERE processed_at <= (SELECT MAX(received_at) FROM events)"
sql "SELECT 'evaluated after it:   ' || COUNT(*) || ' events, ' || ROUND(COUNT(*) * 1000.0 / NULLIF(MAX(processed_at) - (SELECT MAX(received_at) FROM events), 0)) || '/s' FROM evaluations WHERE processed_at > (SELECT MAX(received_at) FROM events)"
sql "SELECT 'evaluated overall:    ' || ROUND(COUNT(*) * 1000.0 / NULLIF(MAX(processed_at) - MIN(processed_at), 0)) || '/s' FROM evaluations"
sql "SELECT 'rule failures:        ' || COUNT(*) FROM rule_verdicts WHERE verdict = 'error'"
# Dead-lettered jobs are expected (the shipped vip-missed rule posts to a target not configured
# here); anything else logged as a warning or error is shown, numbers folded.
for i in $(seq 1 "$instances"); do
    grep -E ' (WARN|ERROR) ' "$work/$i/log" | grep -v 'dead-lettered' | cut -d' ' -f2- |
        sed -E 's/[0-9]+/N/g' | cut -c1-240 | sort | uniq -c | sort -rn | head -5 |
        sed "s/^/instance $i: /"
done
