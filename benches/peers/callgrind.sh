#!/usr/bin/env bash
# Instructions per request of the hit path as axum calls it (bench `oneshot` of this crate:
# tower-swr, the floor and the peers, each shape, directly and through an axum Router),
# counted by callgrind: each variant runs N times and 0 times in the same process setup
# (runtime, the variant built and warmed), and
#
#     instructions per request = (Ir(N) - Ir(0)) / N
#
# Usage (from anywhere in the repository):
#     bash benches/peers/callgrind.sh                       # every variant x every shape
#     N=5000 VARIANTS="floor tower-swr" SHAPES=host bash benches/peers/callgrind.sh
#     KEEP=1 bash benches/peers/callgrind.sh                # keep the callgrind.out files for
#                                                           # callgrind_annotate --inclusive=yes
# Knobs: N (default 10000), VARIANTS (default: all below; the Router ones are `router-<x>`),
#        SHAPES (path host absolute), OUT_DIR (default: a temporary directory),
#        CARGO_TARGET_DIR (honoured by cargo as usual).
# A variant that does not cache a shape is printed as "not cached" (nothing to count).
set -euo pipefail

N=${N:-10000}
ALL="floor tower-swr tower-swr-no-info bare axum-response-cache tower-http-cache hitbox-tower http-cache-tower-server"
if [[ -z "${VARIANTS:-}" ]]; then
    VARIANTS="$ALL"
    for v in $ALL; do VARIANTS="$VARIANTS router-$v"; done
fi
SHAPES=${SHAPES:-"path host absolute"}
KEEP=${KEEP:-0}

cd "$(dirname "$0")"

if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (Debian: sudo apt-get install -y valgrind)" >&2
    exit 1
fi

# The bench profile of this crate keeps debug info (Cargo.toml), for callgrind_annotate.
echo "building the bench (cargo bench --bench oneshot --no-run) ..." >&2
BIN=$(cargo bench --bench oneshot --no-run --message-format=json \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    echo "could not find the bench executable" >&2
    exit 1
fi

if [[ -z "${OUT_DIR:-}" ]]; then
    OUT_DIR=$(mktemp -d)
    if [[ "$KEEP" == 0 ]]; then
        trap 'rm -rf "$OUT_DIR"' EXIT
    fi
fi
mkdir -p "$OUT_DIR"

# Total instructions (Ir) of one run of `oneshot-<variant>/<shape>` with `n` iterations;
# empty when the variant does not cache the shape.
instructions() {
    local variant=$1 shape=$2 n=$3
    local out="$OUT_DIR/callgrind.$variant.$shape.$n.out"
    if ! PEERS_COUNT="oneshot-$variant/$shape:$n" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --bench \
        >"$out.log" 2>&1; then
        if grep -q "not cached, nothing to count" "$out.log"; then
            return 0
        fi
        echo "run failed: oneshot-$variant/$shape:$n (log: $out.log)" >&2
        tail -20 "$out.log" >&2
        exit 1
    fi
    local ir
    ir=$(awk '/^summary:/ { print $2 }' "$out")
    if [[ -z "$ir" ]]; then
        echo "no summary in $out" >&2
        exit 1
    fi
    echo "$ir"
}

echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- ../../src 2>/dev/null || echo ' (+ uncommitted src changes)'), N=$N, binary $BIN" >&2
printf '%-32s %-10s %14s %10s %12s\n' variant shape instr/request "x floor" "x tower-swr"
declare -A base
for shape in $SHAPES; do
    for variant in $VARIANTS; do
        zero=$(instructions "$variant" "$shape" 0)
        if [[ -z "$zero" ]]; then
            printf '%-32s %-10s %14s\n' "$variant" "$shape" "not cached"
            continue
        fi
        full=$(instructions "$variant" "$shape" "$N")
        per=$(awk -v a="$full" -v b="$zero" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
        place=direct
        [[ "$variant" == router-* ]] && place=router
        case "${variant#router-}" in
            floor) base[$place.floor]=$per ;;
            tower-swr) base[$place.swr]=$per ;;
        esac
        floor=${base[$place.floor]:-}
        swr=${base[$place.swr]:-}
        r1=$(awk -v p="$per" -v f="$floor" 'BEGIN { if (f > 0) printf "%.2f", p / f; else printf "-" }')
        r2=$(awk -v p="$per" -v f="$swr" 'BEGIN { if (f > 0) printf "%.2f", p / f; else printf "-" }')
        printf '%-32s %-10s %14s %10s %12s\n' "$variant" "$shape" "$per" "$r1" "$r2"
    done
    unset base
    declare -A base
done
if [[ "$KEEP" != 0 ]]; then
    echo "callgrind outputs kept in $OUT_DIR" >&2
fi
