#!/usr/bin/env bash
# Instructions per request of the hit path as axum calls it (group `hit_oneshot` of
# benches/swr.rs), counted by callgrind: each variant runs N times and 0 times in the same
# process setup (runtime, caches, warm-up), and
#
#     instructions per request = (Ir(N) - Ir(0)) / N
#
# Usage (from anywhere in the repository):
#     bash benches/callgrind.sh                      # every variant x every shape
#     N=50000 VARIANTS="floor tower-swr" SHAPES=host bash benches/callgrind.sh
#     KEEP=1 bash benches/callgrind.sh               # keep the callgrind.out files for
#                                                    # callgrind_annotate --inclusive=yes
# Knobs: N (default 20000), VARIANTS (floor tower-swr tower-swr-no-info axum-floor axum),
#        SHAPES (path host absolute), OUT_DIR (default: a temporary directory),
#        CARGO_TARGET_DIR (honoured by cargo as usual).
set -euo pipefail

N=${N:-20000}
VARIANTS=${VARIANTS:-"floor tower-swr tower-swr-no-info axum-floor axum"}
SHAPES=${SHAPES:-"path host absolute"}
KEEP=${KEEP:-0}

cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (Debian: sudo apt-get install -y valgrind)" >&2
    exit 1
fi

# The bench binary with debug info (for callgrind_annotate); the code is the same as without.
echo "building the bench (CARGO_PROFILE_BENCH_DEBUG=true cargo bench --bench swr --no-run) ..." >&2
BIN=$(CARGO_PROFILE_BENCH_DEBUG=true cargo bench --bench swr --no-run --message-format=json \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    echo "could not find the bench executable" >&2
    exit 1
fi

# A temporary directory unless OUT_DIR is given; removed at the end unless KEEP=1.
if [[ -z "${OUT_DIR:-}" ]]; then
    OUT_DIR=$(mktemp -d)
    if [[ "$KEEP" == 0 ]]; then
        trap 'rm -rf "$OUT_DIR"' EXIT
    fi
fi
mkdir -p "$OUT_DIR"

# Total instructions (Ir) of one run of `oneshot-<variant>/<shape>` with `n` iterations.
instructions() {
    local variant=$1 shape=$2 n=$3
    local out="$OUT_DIR/callgrind.$variant.$shape.$n.out"
    SWR_BENCH_COUNT="oneshot-$variant/$shape:$n" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --bench hit_oneshot \
        >"$out.log" 2>&1 || {
        echo "run failed: oneshot-$variant/$shape:$n (log: $out.log)" >&2
        tail -20 "$out.log" >&2
        exit 1
    }
    local ir
    ir=$(awk '/^summary:/ { print $2 }' "$out")
    if [[ -z "$ir" ]]; then
        echo "no summary in $out" >&2
        exit 1
    fi
    echo "$ir"
}

echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted src changes)'), N=$N, binary $BIN" >&2
printf '%-20s %-10s %14s %10s\n' variant shape instr/request "x floor"
declare -A floor_of
for shape in $SHAPES; do
    for variant in $VARIANTS; do
        zero=$(instructions "$variant" "$shape" 0)
        full=$(instructions "$variant" "$shape" "$N")
        per=$(awk -v a="$full" -v b="$zero" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
        if [[ "$variant" == floor ]]; then
            floor_of[$shape]=$per
        fi
        ratio=$(awk -v p="$per" -v f="${floor_of[$shape]:-}" \
            'BEGIN { if (f > 0) printf "%.2f", p / f; else printf "-" }')
        printf '%-20s %-10s %14s %10s\n' "$variant" "$shape" "$per" "$ratio"
    done
done
if [[ "$KEEP" != 0 ]]; then
    echo "callgrind outputs kept in $OUT_DIR" >&2
fi
