#!/usr/bin/env bash
# Coverage-guided fuzzing of tower-swr's response path with AFL++ (afl.rs), on stable Rust.
#
#   fuzz/run.sh SECONDS        # e.g. fuzz/run.sh 600
#
# Needs cargo-afl (`cargo install cargo-afl`; it builds AFL++ with `cargo afl config --build`).
# Findings land in fuzz/out/default/crashes/; replay one without AFL with
#   (cd fuzz && cargo afl build --release --features afl && ./target/release/replay out/default/crashes/id*)
# and copy the ones that found a bug into fuzz/regressions/ (each also becomes a test in
# tests/bad_input.rs). The corpus grows in fuzz/out/default/queue/ and is reused by later runs.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:?usage: fuzz/run.sh SECONDS}"

if ! cargo afl --version >/dev/null 2>&1; then
  echo "cargo-afl is missing: cargo install cargo-afl && cargo afl config --build" >&2
  exit 1
fi

cargo afl build --release --bins --features afl

# Starting corpus: the harness's seeds plus every regression (kept or found before).
mkdir -p corpus
./target/release/replay --write-seeds corpus >/dev/null
if compgen -G "regressions/*" >/dev/null; then
  cp regressions/* corpus/
fi

# Regressions first: they must all pass before fuzzing on.
if compgen -G "regressions/*" >/dev/null; then
  ./target/release/replay regressions/* || echo "(some regressions still fail: bugs still open, see tests/bad_input.rs)"
fi

# A sandbox without a core-dump handler or CPU governor: tell AFL++ not to insist.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CPUFREQ=1
export AFL_NO_UI=1
export AFL_NO_AFFINITY=1
# Resume from an earlier run's queue when there is one.
if [[ -d out/default/queue ]]; then
  input="-"
else
  input="corpus"
fi
# Known bugs (each pinned by a regression above and an ignored test) would crash every few
# executions and hide new findings: skip their assertions while fuzzing.
start=$(date +%s)
SWR_FUZZ_SKIP_KNOWN=1 cargo afl fuzz -i "$input" -o out -V "$seconds" -t 2000 ./target/release/http_response \
  > out.log 2>&1 || { tail -40 out.log; exit 1; }
end=$(date +%s)

stats=out/default/fuzzer_stats
echo "== fuzzed for $((end - start)) s"
grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|edges_found|total_edges|stability)' "$stats"
crashes=$(find out/default/crashes -type f -name 'id:*' | wc -l)
hangs=$(find out/default/hangs -type f -name 'id:*' | wc -l)
echo "crashes: $crashes, hangs: $hangs"
if (( crashes > 0 )); then
  echo "replaying the crashes:"
  ./target/release/replay out/default/crashes/id* || true
  exit 2
fi
