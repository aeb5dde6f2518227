#!/usr/bin/env bash
# Runs every fuzz target for TIME seconds or 10 million executions each,
# whichever comes first (issue 10's bar), and writes a summary (libFuzzer's
# last status line and final stats per target) to
# fuzz/work/summary-<UTC time>.txt, printing it as well.
#
#   fuzz/run_all.sh 120            # every target, 2 minutes each
#   fuzz/run_all.sh 1800 topic     # only the targets named
#   JOBS=2 fuzz/run_all.sh 1800    # two targets at a time
#   RUNS=0 fuzz/run_all.sh 600     # no execution cap: the whole TIME
#
# New inputs go to fuzz/work/<target>/ (ignored by git); the seed corpus in
# fuzz/corpus/<target>/ and fuzz/regressions/<target>/ is read, never
# written. Crashes land in fuzz/artifacts/<target>/. One target at a time
# unless JOBS says otherwise: each libFuzzer process uses one core, and the
# machine has two, shared with other work. cargo-fuzz needs nightly
# features; RUSTC_BOOTSTRAP=1 lets the stable toolchain build it.
set -euo pipefail

TIME=${1:?usage: run_all.sh TIME [target...]}
shift
JOBS=${JOBS:-1}
RUNS=${RUNS:-10000000}
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

mkdir -p work/logs work/lines
SUMMARY="work/summary-$(date -u +%Y%m%dT%H%M%SZ).txt"
# Built once, then the binaries run: edits to the crate during a long run
# neither change what is fuzzed nor stop it for a rebuild.
cargo fuzz build >/dev/null
BUILT_AT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ../src ../Cargo.toml || echo "+changes")
BIN_DIR=target/$(rustc -vV | sed -n 's/^host: //p')/release
runs_flag=()
[ "$RUNS" = 0 ] || runs_flag=(-runs="$RUNS")

# Runs one target and writes its summary line to work/lines/<target>.
run_target() {
    local target=$1
    mkdir -p "work/$target" "corpus/$target" "regressions/$target" "artifacts/$target"
    local log="work/logs/$target.log"
    local before start seconds crashes status execs cov ft
    before=$(find "artifacts/$target" -type f | wc -l)
    start=$(date +%s)
    # A crash ends the run with a non-zero status; the summary says so.
    "$BIN_DIR/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$TIME" "${runs_flag[@]}" -timeout=30 -print_final_stats=1 \
        "work/$target" "corpus/$target" "regressions/$target" \
        >"$log" 2>&1 || true
    seconds=$(($(date +%s) - start))
    crashes=$(($(find "artifacts/$target" -type f | wc -l) - before))
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | tr -s '\t ' ' ' || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    [ -n "$execs" ] || execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$status")
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$status")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$status")
    printf '%-14s %12s %8s %8s %8s %8s  %s\n' "$target" "${execs:-?}" "$seconds" \
        "${cov:-?}" "${ft:-?}" "$crashes" "$status" >"work/lines/$target"
}

for target in "${TARGETS[@]}"; do
    rm -f "work/lines/$target"
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run_target "$target" &
done
wait

{
    echo "# fuzz run: ${TIME}s or ${RUNS} executions per target (0: no cap), $JOBS at a time," \
        "$(date -u +%FT%TZ), $(nproc) cores, built at commit $BUILT_AT"
    printf '%-14s %12s %8s %8s %8s %8s  %s\n' target execs seconds cov ft crashes "last status line"
    for target in "${TARGETS[@]}"; do cat "work/lines/$target"; done
} >"$SUMMARY"
cat "$SUMMARY"
echo "summary written to fuzz/$SUMMARY"
