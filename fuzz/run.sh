#!/usr/bin/env bash
# Coverage-guided fuzzing of tower-swr with AFL++ (afl.rs), on stable Rust.
#
#   fuzz/run.sh SECONDS            # the response target (http_response), e.g. fuzz/run.sh 600
#   fuzz/run.sh SECONDS request    # the request target (http_request): ranges, conditionals
#   fuzz/run.sh SECONDS codec      # the codec target (codec): decoding stored responses
#
# Needs cargo-afl (`cargo install cargo-afl`; it builds AFL++ with `cargo afl config --build`).
# Findings land in fuzz/out/default/crashes/ (request target: fuzz/out-request/...); replay one
# without AFL with
#   (cd fuzz && cargo afl build --release --features afl && ./target/release/replay out/default/crashes/id*)
# (add --request for the request target, --codec for the codec target) and copy the ones that
# found a bug into fuzz/regressions/, named req-* for the request target and codec-* for the
# codec target (each also becomes a test in tests/bad_input.rs). The corpus grows in out*/default/queue/ and is reused by later runs.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:?usage: fuzz/run.sh SECONDS [response|request|codec]}"
case "${2:-response}" in
  response) target=http_response seeds="seed-*" out=out corpus=corpus replay_flags=() ;;
  request) target=http_request seeds="req-*" out=out-request corpus=corpus-request replay_flags=(--request) ;;
  codec) target=codec seeds="codec-*" out=out-codec corpus=corpus-codec replay_flags=(--codec) ;;
  *) echo "usage: fuzz/run.sh SECONDS [response|request|codec]" >&2; exit 1 ;;
esac

if ! cargo afl --version >/dev/null 2>&1; then
  echo "cargo-afl is missing: cargo install cargo-afl && cargo afl config --build" >&2
  exit 1
fi

cargo afl build --release --bins --features afl

# Regressions of every target: regressions/req-* are the request target's, regressions/codec-*
# the codec target's, the rest the response target's.
response_regressions=()
request_regressions=()
codec_regressions=()
for file in regressions/*; do
  [[ -f "$file" ]] || continue
  case "$(basename "$file")" in
    req-*) request_regressions+=("$file") ;;
    codec-*) codec_regressions+=("$file") ;;
    *) response_regressions+=("$file") ;;
  esac
done
case "$target" in
  http_request) regressions=("${request_regressions[@]}") ;;
  codec) regressions=("${codec_regressions[@]}") ;;
  *) regressions=("${response_regressions[@]}") ;;
esac

# Starting corpus: the target's seeds plus its regressions (kept or found before).
mkdir -p "$corpus"
seed_dir=$(mktemp -d)
./target/release/replay --write-seeds "$seed_dir" >/dev/null
# shellcheck disable=SC2086 # $seeds is a glob
cp "$seed_dir"/$seeds "$corpus"/
rm -r "$seed_dir"
if (( ${#regressions[@]} > 0 )); then
  cp "${regressions[@]}" "$corpus"/
fi

# Regressions first: they must all pass before fuzzing on.
failing=0
if (( ${#response_regressions[@]} > 0 )); then
  ./target/release/replay "${response_regressions[@]}" || failing=1
fi
if (( ${#request_regressions[@]} > 0 )); then
  ./target/release/replay --request "${request_regressions[@]}" || failing=1
fi
if (( ${#codec_regressions[@]} > 0 )); then
  ./target/release/replay --codec "${codec_regressions[@]}" || failing=1
fi
if (( failing )); then
  echo "(some regressions still fail: bugs still open, see tests/bad_input.rs)"
fi

# A sandbox without a core-dump handler or CPU governor: tell AFL++ not to insist.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CPUFREQ=1
export AFL_NO_UI=1
export AFL_NO_AFFINITY=1
# Resume from an earlier run's queue when there is one.
if [[ -d "$out"/default/queue ]]; then
  input="-"
else
  input="$corpus"
fi
# Known bugs (each pinned by a regression above and an ignored test) would crash every few
# executions and hide new findings: skip their assertions while fuzzing.
start=$(date +%s)
SWR_FUZZ_SKIP_KNOWN=1 cargo afl fuzz -i "$input" -o "$out" -V "$seconds" -t 2000 "./target/release/$target" \
  > "$out.log" 2>&1 || { tail -40 "$out.log"; exit 1; }
end=$(date +%s)

stats="$out"/default/fuzzer_stats
echo "== fuzzed for $((end - start)) s"
grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|edges_found|total_edges|stability)' "$stats"
crashes=$(find "$out"/default/crashes -type f -name 'id:*' | wc -l)
hangs=$(find "$out"/default/hangs -type f -name 'id:*' | wc -l)
echo "crashes: $crashes, hangs: $hangs"
if (( crashes > 0 )); then
  echo "replaying the crashes:"
  ./target/release/replay "${replay_flags[@]}" "$out"/default/crashes/id* || true
  exit 2
fi
