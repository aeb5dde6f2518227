#!/usr/bin/env bash
# Two jwtgate builds side by side on this machine: is a change faster or
# slower than what it replaces? Figures from different days or machines do
# not compare (a busy or throttled VM moves every rate), an alternating A/B
# run does.
#
#   git worktree add /tmp/old <commit> && cargo build --release --manifest-path /tmp/old/Cargo.toml
#   bash benches/ab.sh target/release/jwtgate /tmp/old/target/release/jwtgate
#
# Arguments: NEW OLD (two `jwtgate` binaries). Options:
#   --scenarios LIST   load generator scenarios (default connect,connect-resume)
#   --rounds N         rounds, alternating which build goes first (default 3)
#   --out DIR          output directory (default target/bench-ab/<time>)
# Prints the report (`new` is A, `old` is B) and writes results.jsonl and
# table.md to the output directory. Environment: NEW_PORT (default 28883),
# OLD_PORT (default 28884).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCENARIOS=connect,connect-resume
ROUNDS=3
OUT=
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --scenarios) SCENARIOS=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done
[ ${#ARGS[@]} = 2 ] || { echo "usage: ab.sh NEW OLD [--scenarios LIST] [--rounds N] [--out DIR]" >&2; exit 2; }
NEW=$(realpath "${ARGS[0]}")
OLD=$(realpath "${ARGS[1]}")
OUT=${OUT:-$ROOT/target/bench-ab/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/jwtgate-ab.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

echo "[ab] building the load generator" >&2
BENCH=$(cd "$ROOT" && cargo bench --bench mqtt --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/mqtt-[^"]*\)".*/\1/p' | tail -n1)
[ -x "$BENCH" ] || { echo "ab.sh: could not build benches/mqtt.rs" >&2; exit 1; }

# Certificates and a secret from the new build's first run, shared by both.
cd "$WORK"
("$NEW" serve --listen 127.0.0.1:0 > firstrun.log 2>&1) &
FIRST_PID=$!
for _ in $(seq 1 100); do
    [ -s keys/tls/server.crt ] && [ -s keys/dev.b64 ] && break
    sleep 0.1
done
kill "$FIRST_PID" 2>/dev/null || true
wait "$FIRST_PID" 2>/dev/null || true
[ -s keys/tls/server.crt ] || { cat firstrun.log >&2; exit 1; }
SECRET=keys/dev.b64

start() { # name binary port
    printf 'listen = "127.0.0.1:%s"\n[tls]\ncert = "keys/tls/server.crt"\nkey = "keys/tls/server.key"\n[auth]\nkeys_dir = "keys"\n[limits]\nmax_connections = 12000\n' "$3" > "$1.toml"
    "$2" serve --config "$1.toml" > "$OUT/$1.log" 2>&1 &
    PIDS+=($!)
    eval "${1}_PID=$!"
}
NEW_PORT=${NEW_PORT:-28883}
OLD_PORT=${OLD_PORT:-28884}
start new "$NEW" "$NEW_PORT"
start old "$OLD" "$OLD_PORT"
sleep 1

: > "$OUT/results.jsonl"
for round in $(seq "$ROUNDS"); do
    order="new old"; [ $((round % 2)) = 0 ] && order="old new"
    for scenario in ${SCENARIOS//,/ }; do
        for who in $order; do
            port=$([ "$who" = new ] && echo "$NEW_PORT" || echo "$OLD_PORT")
            pid=$([ "$who" = new ] && echo "$new_PID" || echo "$old_PID")
            echo "[ab $(date +%H:%M:%S)] round $round: $scenario on $who" >&2
            "$BENCH" run --label "$who" --round "$round" --scenario "$scenario" \
                --ca keys/tls/ca.crt --clients 2000 --duration 10s --subscribers 100 \
                --idle-clients 10000 --settle 3s --json "$OUT/results.jsonl" \
                --port "$port" --secret-file "$SECRET" --broker-pid "$pid" > /dev/null
            sleep 1
        done
    done
done
"$BENCH" report --a new --b old "$OUT/results.jsonl" | tee "$OUT/table.md"
