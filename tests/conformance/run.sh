#!/usr/bin/env bash
# Run the public HTTP cache test suite (npm package http-cache-tests) against a
# caching reverse proxy and score the result. See README.md in this folder.
#
#   tests/conformance/run.sh                      # build + test examples/reverse_proxy
#   PROXY_CMD='...' tests/conformance/run.sh      # test any proxy on $PROXY_PORT
#   TEST_ID=vary-no-match tests/conformance/run.sh   # one test, verbose request/response dump
#   SCORE_ONLY=path/results.json tests/conformance/run.sh   # (re)score an existing results file
#   tests/conformance/run.sh --score-only path/results.json # same
#
# Environment (all optional):
#   PROXY_CMD       command (run with bash -c) that starts the proxy in the foreground,
#                   listening on 127.0.0.1:$PROXY_PORT and forwarding to 127.0.0.1:$ORIGIN_PORT.
#                   Default: build and run `--example reverse_proxy -- --listen ... --upstream ...`.
#   PROXY_PORT      proxy port (default 8102)
#   ORIGIN_PORT     port of the suite's origin server (default 8100)
#   PROXY_WAIT      seconds to wait for the proxy port to answer once started (default 120)
#   CLI_TIMEOUT     seconds the whole test client may run (default 300; a full run takes ~15-20 s)
#   OUT_DIR         where results.json and the logs go (default tests/conformance/out)
#   SUITE_HOME      where the suite is installed (default tests/conformance/.suite, gitignored)
#   FRESH_SUITE=1   reinstall the suite even if it is already installed
#   BASELINE_FILE   ratchet file (default tests/conformance/baseline.txt); a single integer
#   TEST_ID         run only this test id and print the suite's request/response dump
#   SCORE_ONLY      path of a results.json to score; nothing is started
#
# Exit status: 0 ok; 1 required score below the baseline; 2 harness/setup error.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

SUITE_NAME=http-cache-tests
SUITE_VERSION=0.4.5
# sha1 of http-cache-tests-0.4.5.tgz as published on the npm registry
SUITE_SHA1=33acf7d2711445cd0222ce61af264681405f370b

PROXY_PORT="${PROXY_PORT:-8102}"
ORIGIN_PORT="${ORIGIN_PORT:-8100}"
PROXY_WAIT="${PROXY_WAIT:-120}"
CLI_TIMEOUT="${CLI_TIMEOUT:-300}"
OUT_DIR="${OUT_DIR:-$HERE/out}"
SUITE_HOME="${SUITE_HOME:-$HERE/.suite}"
BASELINE_FILE="${BASELINE_FILE:-$HERE/baseline.txt}"
TEST_ID="${TEST_ID:-}"
SCORE_ONLY="${SCORE_ONLY:-}"

if [[ "${1:-}" == "--score-only" ]]; then
  [[ $# -eq 2 ]] || { echo "usage: $0 --score-only RESULTS_JSON" >&2; exit 2; }
  SCORE_ONLY="$2"
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--score-only RESULTS_JSON]   (other settings via environment, see the header)" >&2
  exit 2
fi

log() { printf '[conformance] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

command -v node >/dev/null || die "node is required"
command -v npm >/dev/null || die "npm is required"

# ---------------------------------------------------------------------------
# 1. install the suite (npm pack + unpack + npm install --omit=dev), cached in SUITE_HOME
# ---------------------------------------------------------------------------
SUITE_DIR="$SUITE_HOME/$SUITE_NAME-$SUITE_VERSION"
install_suite() {
  if [[ -f "$SUITE_DIR/.installed" && -z "${FRESH_SUITE:-}" ]]; then
    return 0
  fi
  log "installing $SUITE_NAME@$SUITE_VERSION into $SUITE_DIR"
  mkdir -p "$SUITE_HOME"
  local tmp
  tmp="$(mktemp -d "$SUITE_HOME/install.XXXXXX")"
  (
    cd "$tmp"
    npm pack --silent "$SUITE_NAME@$SUITE_VERSION" >/dev/null
    local tgz="$SUITE_NAME-$SUITE_VERSION.tgz"
    [[ -f "$tgz" ]] || { echo "npm pack produced no $tgz" >&2; exit 1; }
    local sum
    sum="$(sha1sum "$tgz" | cut -d' ' -f1)"
    [[ "$sum" == "$SUITE_SHA1" ]] || { echo "checksum mismatch for $tgz: $sum != $SUITE_SHA1" >&2; exit 1; }
    tar xzf "$tgz"
    cd package
    # Runtime needs only node-fetch (cli.mjs); liquidjs and npm@6 are declared but unused
    # by the CLI/server. Install what the package declares, nothing from devDependencies.
    npm install --omit=dev --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null
  ) || { rm -rf "$tmp"; die "installing $SUITE_NAME@$SUITE_VERSION failed"; }
  rm -rf "$SUITE_DIR"
  mv "$tmp/package" "$SUITE_DIR"
  rm -rf "$tmp"
  touch "$SUITE_DIR/.installed"
}
install_suite

score() {
  local results="$1"
  local baseline_args=()
  if [[ -f "$BASELINE_FILE" ]]; then
    local b
    b="$(tr -d '[:space:]' <"$BASELINE_FILE")"
    [[ "$b" =~ ^[0-9]+$ ]] || die "$BASELINE_FILE must hold a single integer, got '$b'"
    baseline_args=(--baseline "$b")
  fi
  local rc=0
  node "$HERE/score.mjs" "$SUITE_DIR" "$results" --by-suite "${baseline_args[@]}" || rc=$?
  return "$rc"
}

if [[ -n "$SCORE_ONLY" ]]; then
  [[ -f "$SCORE_ONLY" ]] || die "no such results file: $SCORE_ONLY"
  score "$SCORE_ONLY"
  exit $?
fi

# ---------------------------------------------------------------------------
# 2. processes: origin server, proxy; everything we start is stopped on exit
# ---------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
ORIGIN_PID=""
PROXY_PID=""

stop_pid() { # stop_pid PID [group]
  local pid="$1" target="$1"
  [[ -n "$pid" ]] || return 0
  [[ "${2:-}" == group ]] && target="-$pid"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "$target" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "$target" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_pid "$PROXY_PID" group
  stop_pid "$ORIGIN_PID"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in "$ORIGIN_PORT" "$PROXY_PORT"; do
  if port_answers "$p"; then
    die "something already listens on 127.0.0.1:$p; stop it first (or set ORIGIN_PORT/PROXY_PORT)"
  fi
done

# The origin is the suite's own server (server/server.mjs). `npm run server` only does
# `node server/server.mjs &` with npm_config_{port,protocol,pidfile} in the environment;
# we set those ourselves so we hold the real pid. loopback.cjs makes it bind 127.0.0.1
# only (server.mjs calls listen(port), i.e. all interfaces).
cat >"$OUT_DIR/loopback.cjs" <<'EOF'
const http = require('http')
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (...args) {
  if (args.length >= 1 && (typeof args[0] === 'number' || typeof args[0] === 'string') &&
      (args.length === 1 || typeof args[1] === 'function')) {
    return listen.call(this, Number(args[0]), '127.0.0.1', ...args.slice(1))
  }
  return listen.apply(this, args)
}
EOF
log "starting origin ($SUITE_NAME server) on 127.0.0.1:$ORIGIN_PORT"
(
  cd "$SUITE_DIR"
  export npm_config_port="$ORIGIN_PORT" npm_config_protocol=http npm_config_pidfile="$OUT_DIR/origin.pid"
  exec node --require "$OUT_DIR/loopback.cjs" server/server.mjs
) >"$OUT_DIR/origin.log" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 1 100); do
  port_answers "$ORIGIN_PORT" && break
  kill -0 "$ORIGIN_PID" 2>/dev/null || { cat "$OUT_DIR/origin.log" >&2; die "origin server exited"; }
  sleep 0.1
done
port_answers "$ORIGIN_PORT" || die "origin did not answer on 127.0.0.1:$ORIGIN_PORT within 10 s"

# The proxy under test.
if [[ -z "${PROXY_CMD:-}" ]]; then
  command -v cargo >/dev/null || die "cargo is required for the default PROXY_CMD"
  log "building examples/reverse_proxy (release)"
  (cd "$REPO" && cargo build --release --example reverse_proxy) >"$OUT_DIR/build.log" 2>&1 \
    || { tail -n 40 "$OUT_DIR/build.log" >&2; die "cargo build --release --example reverse_proxy failed (log: $OUT_DIR/build.log)"; }
  TARGET_DIR="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
    | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
  PROXY_BIN="$TARGET_DIR/release/examples/reverse_proxy"
  [[ -x "$PROXY_BIN" ]] || die "built example not found at $PROXY_BIN"
  # Run the binary itself (not `cargo run`) so the pid we stop is the proxy's.
  PROXY_CMD="exec '$PROXY_BIN' --listen 127.0.0.1:$PROXY_PORT --upstream http://127.0.0.1:$ORIGIN_PORT"
fi
log "starting proxy: $PROXY_CMD"
# Own process group (setsid), so wrappers and their children are stopped together.
setsid bash -c "$PROXY_CMD" >"$OUT_DIR/proxy.log" 2>&1 </dev/null &
PROXY_PID=$!
deadline=$((SECONDS + PROXY_WAIT))
until port_answers "$PROXY_PORT"; do
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    tail -n 40 "$OUT_DIR/proxy.log" >&2
    die "proxy exited before listening on 127.0.0.1:$PROXY_PORT (log: $OUT_DIR/proxy.log)"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 40 "$OUT_DIR/proxy.log" >&2
    die "proxy did not answer on 127.0.0.1:$PROXY_PORT within ${PROXY_WAIT}s (log: $OUT_DIR/proxy.log)"
  fi
  sleep 0.2
done
log "proxy is up"

# ---------------------------------------------------------------------------
# 3. run the suite's CLI through the proxy
# ---------------------------------------------------------------------------
BASE="http://127.0.0.1:$PROXY_PORT" # no trailing slash: the client appends /test/<uuid>
if [[ -n "$TEST_ID" ]]; then
  log "running single test $TEST_ID against $BASE"
  (cd "$SUITE_DIR" && timeout "$CLI_TIMEOUT" npm run --silent cli --base="$BASE" --id="$TEST_ID")
  log "origin log: $OUT_DIR/origin.log, proxy log: $OUT_DIR/proxy.log"
  exit 0
fi

RESULTS="$OUT_DIR/results.json"
log "running the suite against $BASE (results: $RESULTS)"
start=$SECONDS
rc=0
(cd "$SUITE_DIR" && timeout "$CLI_TIMEOUT" npm run --silent cli --base="$BASE") \
  >"$RESULTS.tmp" 2>"$OUT_DIR/cli.stderr" || rc=$?
if [[ $rc -ne 0 ]]; then
  tail -n 20 "$OUT_DIR/cli.stderr" >&2
  die "the suite's CLI failed (exit $rc; 124 means it hit CLI_TIMEOUT=${CLI_TIMEOUT}s)"
fi
node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));if(!Object.keys(r).length)process.exit(1)' "$RESULTS.tmp" \
  || { head -c 2000 "$RESULTS.tmp" >&2; tail -n 20 "$OUT_DIR/cli.stderr" >&2; die "the CLI did not print a JSON results object"; }
mv "$RESULTS.tmp" "$RESULTS"
log "suite finished in $((SECONDS - start)) s"

# stop the servers before scoring (the trap would too)
stop_pid "$PROXY_PID" group; PROXY_PID=""
stop_pid "$ORIGIN_PID"; ORIGIN_PID=""

# ---------------------------------------------------------------------------
# 4. score (+ ratchet against baseline.txt)
# ---------------------------------------------------------------------------
score "$RESULTS"
