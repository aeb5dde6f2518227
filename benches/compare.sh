#!/usr/bin/env bash
# jwtgate vs Mosquitto, side by side, on loopback, in one command.
#
#   bash benches/compare.sh            # full run (~9 minutes plus the build)
#   bash benches/compare.sh --quick    # short run (~3 minutes)
#
# What it does:
#   1. installs Mosquitto (Debian's `mosquitto` package) if it is missing;
#   2. builds jwtgate and the load generator (benches/mqtt.rs) in release
#      and copies both binaries to a scratch directory (so a rebuild in the
#      tree during the run changes nothing);
#   3. creates the certificates with jwtgate's own first run (a development
#      CA and an ECDSA P-256 server certificate for 127.0.0.1) and an HMAC
#      secret; Mosquitto gets the same certificate and a password file;
#   4. starts Mosquitto (TLS listener, password file, no persistence,
#      TCP_NODELAY) and jwtgate (`serve --config`, its routing core with the
#      `[sessions]` defaults) on two loopback ports, with a raised
#      RLIMIT_NOFILE;
#   5. runs every scenario against both, alternating which broker goes first
#      in each round; the idle-capacity scenario restarts each broker first
#      so its RSS is that of a fresh process;
#   6. writes results.jsonl, table.md (medians, ratio jwtgate/Mosquitto,
#      the brokers' CPU time and context switches per message, and the
#      targets: issue 8's throughput, latency and memory; issue 24's at the
#      fixed rate of fanout-rate, CPU per delivery at most Mosquitto's and
#      context switches per delivery at most twice its, and idle RSS per
#      connection at most Mosquitto's) and machine.txt to the output
#      directory and prints the table;
#   7. stops everything it started (trap on EXIT).
#
# Options:
#   --quick            fewer clients, shorter runs, 2 rounds, one idle round
#   --rounds N         rounds of the fast scenarios (default 3; --quick: 2)
#   --idle-rounds N    rounds of the idle scenario (default 2; --quick: 1)
#   --scenarios LIST   comma-separated subset of: connect,connect-resume,
#                      fanin-qos0,fanin-qos1,fanout,fanout-rate,latency,idle
#   --out DIR          output directory (default target/bench-compare/<time>)
#   --no-build         use the binaries already built
#   --wss              also run every scenario against jwtgate's WebSocket
#                      listener (label jwtgate-wss, the same process), and
#                      print a second table: WSS against jwtgate's TLS rows
# Environment: JWT_PORT (default 18883), MOSQ_PORT (default 18884),
# JWT_WS_PORT (default 18885).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
ROUNDS=
IDLE_ROUNDS=
SCENARIOS="connect,connect-resume,fanin-qos0,fanin-qos1,fanout,fanout-rate,latency,idle"
OUT=
BUILD=1
WSS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --idle-rounds) IDLE_ROUNDS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --wss) WSS=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    CLIENTS=1000; DURATION=3s; IDLE_CLIENTS=5000; SUBSCRIBERS=100; SETTLE=2s
    : "${ROUNDS:=2}" "${IDLE_ROUNDS:=1}"
else
    CLIENTS=2000; DURATION=10s; IDLE_CLIENTS=10000; SUBSCRIBERS=100; SETTLE=3s
    : "${ROUNDS:=3}" "${IDLE_ROUNDS:=2}"
fi
JWT_PORT=${JWT_PORT:-18883}
MOSQ_PORT=${MOSQ_PORT:-18884}
JWT_WS_PORT=${JWT_WS_PORT:-18885}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/target/bench-compare/$STAMP}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
WORK=$(mktemp -d /tmp/jwtgate-compare.XXXXXX)

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- cleanup: stop exactly what this script started ---------------------------
JWT_PID=
MOSQ_PID=
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$JWT_PID"; JWT_PID=
    stop_pid "$MOSQ_PID"; MOSQ_PID=
    [ -d "$WORK" ] && cp -f "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. Mosquitto -------------------------------------------------------------
if ! command -v mosquitto >/dev/null || ! command -v mosquitto_passwd >/dev/null; then
    log "installing mosquitto"
    SUDO=
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# --- 2. build -------------------------------------------------------------------
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    log "building jwtgate and the load generator (release)"
    cargo build --release --bin jwtgate >&2
fi
BENCH_EXE=$(cargo bench --bench mqtt --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/deps\/mqtt-[0-9a-f]*\)".*/\1/p' | tail -1)
[ -x "$BENCH_EXE" ] || { echo "compare.sh: load generator not built" >&2; exit 1; }
cp "$ROOT/target/release/jwtgate" "$WORK/jwtgate"
cp "$BENCH_EXE" "$WORK/mqtt-bench"
JWTGATE=$WORK/jwtgate
BENCH=$WORK/mqtt-bench

# --- 3. certificates and credentials -------------------------------------------
# jwtgate's first run creates keys/tls/{ca,server}.{crt,key} (ECDSA P-256) and
# keys/dev.b64; it is stopped as soon as they exist.
log "creating certificates with jwtgate's first run"
(cd "$WORK" && exec "$JWTGATE" serve --listen 127.0.0.1:0 >"$WORK/firstrun.log" 2>&1) &
FIRST_PID=$!
for _ in $(seq 1 100); do
    [ -s "$WORK/keys/tls/server.crt" ] && [ -s "$WORK/keys/dev.b64" ] && break
    sleep 0.1
done
stop_pid "$FIRST_PID"
wait "$FIRST_PID" 2>/dev/null || true
[ -s "$WORK/keys/tls/server.crt" ] || { cat "$WORK/firstrun.log" >&2; exit 1; }
CA=$WORK/keys/tls/ca.crt
MOSQ_PASSWORD=bench-$RANDOM$RANDOM
mosquitto_passwd -c -b "$WORK/passwd" bench "$MOSQ_PASSWORD" >/dev/null

# --- 4. limits and configs ----------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$IDLE_CLIENTS" -gt $((NOFILE - 500)) ]; then
    IDLE_CLIENTS=$((NOFILE - 500))
    log "RLIMIT_NOFILE is $NOFILE: idle scenario lowered to $IDLE_CLIENTS connections"
fi

cat >"$WORK/jwtgate.toml" <<EOF
listen = "127.0.0.1:$JWT_PORT"

[tls]
cert = "keys/tls/server.crt"
key = "keys/tls/server.key"

[auth]
keys_dir = "keys"

[limits]
max_connections = $((IDLE_CLIENTS + 2000))

[sessions]
EOF
if [ "$WSS" = 1 ]; then
    printf '\n[websocket]\nlisten = "127.0.0.1:%s"\n' "$JWT_WS_PORT" >>"$WORK/jwtgate.toml"
fi

cat >"$WORK/mosquitto.conf" <<EOF
# Keep root so the key files (mode 0600) stay readable; no effect otherwise.
user root
per_listener_settings false
allow_anonymous false
password_file $WORK/passwd
persistence false
set_tcp_nodelay true
log_dest file $WORK/mosquitto.log
listener $MOSQ_PORT 127.0.0.1
certfile $WORK/keys/tls/server.crt
keyfile $WORK/keys/tls/server.key
EOF

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 100); do
        port_busy "$1" && return 0
        sleep 0.1
    done
    return 1
}
for port in "$JWT_PORT" "$MOSQ_PORT" "$JWT_WS_PORT"; do
    if port_busy "$port"; then
        echo "compare.sh: port $port is in use (set JWT_PORT / MOSQ_PORT)" >&2
        exit 1
    fi
done

start_jwtgate() {
    (cd "$WORK" && NO_COLOR=1 exec "$JWTGATE" serve --config "$WORK/jwtgate.toml" >>"$WORK/jwtgate.log" 2>&1) &
    JWT_PID=$!
    wait_port "$JWT_PORT" || { tail -20 "$WORK/jwtgate.log" >&2; exit 1; }
    if [ "$WSS" = 1 ]; then
        wait_port "$JWT_WS_PORT" || { tail -20 "$WORK/jwtgate.log" >&2; exit 1; }
    fi
}
start_mosquitto() {
    "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.stderr.log" 2>&1 &
    MOSQ_PID=$!
    wait_port "$MOSQ_PORT" || { tail -20 "$WORK/mosquitto.log" "$WORK/mosquitto.stderr.log" >&2; exit 1; }
}
restart() {
    case "$1" in
        jwtgate) stop_pid "$JWT_PID"; JWT_PID=; start_jwtgate ;;
        mosquitto) stop_pid "$MOSQ_PID"; MOSQ_PID=; start_mosquitto ;;
    esac
    sleep 1
}

# --- 5. scenarios ----------------------------------------------------------------------
COMMON=(--ca "$CA" --clients "$CLIENTS" --duration "$DURATION" --subscribers "$SUBSCRIBERS"
        --idle-clients "$IDLE_CLIENTS" --settle "$SETTLE" --json "$RESULTS")
run_one() { # broker scenario round
    local broker=$1 scenario=$2 round=$3
    local args=(run --label "$broker" --round "$round" --scenario "$scenario" "${COMMON[@]}")
    if [ "$broker" = jwtgate ]; then
        args+=(--port "$JWT_PORT" --secret-file "$WORK/keys/dev.b64" --broker-pid "$JWT_PID")
    elif [ "$broker" = jwtgate-wss ]; then
        args+=(--port "$JWT_WS_PORT" --ws-path /mqtt --secret-file "$WORK/keys/dev.b64" --broker-pid "$JWT_PID")
    else
        args+=(--port "$MOSQ_PORT" --username bench --password "$MOSQ_PASSWORD" --broker-pid "$MOSQ_PID")
    fi
    log "round $round: $scenario on $broker"
    if ! "$BENCH" "${args[@]}" >>"$OUT/bench.stdout" 2>>"$OUT/bench.stderr"; then
        log "  (failed; see $OUT/bench.stderr)"
    fi
    tail -n 1 "$RESULTS" | cut -c1-240 >&2
    sleep 1
}
order() { # round -> the brokers, alternating who goes first
    local wss=
    [ "$WSS" = 1 ] && wss=jwtgate-wss
    if [ $(($1 % 2)) = 1 ]; then echo "jwtgate $wss mosquitto"; else echo "mosquitto $wss jwtgate"; fi
}

start_jwtgate
start_mosquitto
sleep 1
T0=$(date +%s)
IFS=, read -r -a WANTED <<<"$SCENARIOS"
FAST=()
for s in "${WANTED[@]}"; do [ "$s" = idle ] || FAST+=("$s"); done
for round in $(seq 1 "$ROUNDS"); do
    for scenario in "${FAST[@]}"; do
        for broker in $(order "$round"); do
            run_one "$broker" "$scenario" "$round"
        done
    done
done
if [[ ",$SCENARIOS," == *",idle,"* ]]; then
    for round in $(seq 1 "$IDLE_ROUNDS"); do
        for broker in $(order "$round"); do
            restart "${broker%-wss}"
            run_one "$broker" idle "$round"
        done
    done
fi
T1=$(date +%s)

# --- 6. report -----------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(uname -srm)"
    echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    echo "openssl: $(openssl version 2>/dev/null || echo '?')"
    echo "rustc: $(rustc -V 2>/dev/null || echo '?')"
    echo "jwtgate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted changes in src/)')"
    echo "jwtgate config: [limits] max_connections $((IDLE_CLIENTS + 2000)), [sessions] defaults (routing core)"
    echo "mode: $([ "$QUICK" = 1 ] && echo quick || echo full), rounds $ROUNDS (idle $IDLE_ROUNDS), clients $CLIENTS, duration $DURATION, subscribers $SUBSCRIBERS, idle connections $IDLE_CLIENTS, RLIMIT_NOFILE $NOFILE"
    echo "scenario time: $((T1 - T0)) s"
} >"$OUT/machine.txt"
"$BENCH" report --a jwtgate --b mosquitto "$RESULTS" >"$OUT/table.md"
if [ "$WSS" = 1 ]; then
    "$BENCH" report --a jwtgate-wss --b jwtgate "$RESULTS" >"$OUT/table-wss.md"
fi
log "done in $((T1 - T0)) s; results in $OUT"
cat "$OUT/machine.txt"
echo
cat "$OUT/table.md"
if [ "$WSS" = 1 ]; then
    echo
    echo "MQTT over secure WebSockets (jwtgate-wss) against MQTT over TLS (jwtgate), the same process:"
    cat "$OUT/table-wss.md"
fi
