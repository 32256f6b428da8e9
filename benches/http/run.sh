#!/usr/bin/env bash
# Over-HTTP benchmark of tower-swr (issue 6, item 6). Not run in CI; see benches/README.md.
#
# Starts on loopback: the bench server (benches/http/server: an axum app with /static, /swr =
# a 50 ms handler behind SwrLayer, /slow = the same handler uncached) and nginx as a caching
# reverse proxy in front of /slow (proxy_cache, proxy_cache_use_stale updating,
# proxy_cache_background_update on, proxy_cache_lock on). Loads each with wrk from a second
# process, same connections and duration, and prints requests/s, p50/p99 and the ratios.
# Stops everything it started.
#
# Environment (defaults): DURATION=10s CONNECTIONS=64 WRK_THREADS=1 APP_PORT=38080
# NGINX_PORT=38081 SERVER_CPUS=0 LOAD_CPUS=1 (taskset lists; empty = no pinning)
# ROUNDS=1 (more: each target that many times, order rotated, medians reported)
# MEMORY_PROBE=0 (1: afterwards, fill /swr with distinct keys and report RSS per entry).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
APP_PORT="${APP_PORT:-38080}"
NGINX_PORT="${NGINX_PORT:-38081}"
SERVER_CPUS="${SERVER_CPUS-0}"
LOAD_CPUS="${LOAD_CPUS-1}"
MEMORY_PROBE="${MEMORY_PROBE:-0}"
ROUNDS="${ROUNDS:-1}"

say() { printf '%s\n' "$*" >&2; }

# ---- what it needs -------------------------------------------------------------------------
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v cargo >/dev/null 2>&1 || { say "cargo is needed to build the bench server"; exit 1; }

say "building the bench server (release)..."
cargo build --release --quiet --manifest-path "$HERE/server/Cargo.toml"
SERVER_BIN="$HERE/server/target/release/tower-swr-http-bench-server"

# Command prefixes that pin to the given CPUs (empty when there is no list or no taskset). They
# are arrays, not functions, so that `PREFIX... CMD &` leaves $! = the pid of CMD itself.
SERVER_PIN=()
LOAD_PIN=()
if command -v taskset >/dev/null 2>&1; then
  [ -n "$SERVER_CPUS" ] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
  [ -n "$LOAD_CPUS" ] && LOAD_PIN=(taskset -c "$LOAD_CPUS")
fi

# ---- start ---------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tower-swr-http.XXXXXX")"
# nginx's cache on tmpfs when there is one: this compares in-memory caches.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  NGINX_PREFIX="$(mktemp -d /dev/shm/tower-swr-nginx.XXXXXX)"
else
  NGINX_PREFIX="$WORK/nginx"
  mkdir -p "$NGINX_PREFIX"
fi
SERVER_PID=""
NGINX_PID=""
cleanup() {
  set +e
  if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
    kill -TERM "$NGINX_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NGINX_PID" 2>/dev/null
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -INT "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null
  fi
  wait 2>/dev/null
  rm -rf "$WORK" "$NGINX_PREFIX"
}
trap cleanup EXIT INT TERM

for port in "$APP_PORT" "$NGINX_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is already in use on 127.0.0.1: set APP_PORT / NGINX_PORT"
    exit 1
  fi
done

SERVER_WORKERS=1
if [ -n "$SERVER_CPUS" ]; then
  SERVER_WORKERS="$(awk -F, '{ n = 0; for (i = 1; i <= NF; i++) { if (split($i, r, "-") == 2) n += r[2] - r[1] + 1; else n++ } print n }' <<<"$SERVER_CPUS")"
else
  SERVER_WORKERS="$(nproc)"
fi
"${SERVER_PIN[@]}" "$SERVER_BIN" "127.0.0.1:$APP_PORT" "$SERVER_WORKERS" 2>"$WORK/server.log" &
SERVER_PID=$!

USER_LINE=""
[ "$(id -u)" -eq 0 ] && USER_LINE="user root;"
mkdir -p "$NGINX_PREFIX/cache"
sed -e "s#@PREFIX@#$NGINX_PREFIX#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    -e "s#@APP_PORT@#$APP_PORT#g" -e "s#@USER_LINE@#$USER_LINE#g" \
    "$HERE/nginx.conf.template" >"$NGINX_PREFIX/nginx.conf"
"${SERVER_PIN[@]}" "$NGINX" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" 2>"$WORK/nginx.log" &
NGINX_PID=$!

wait_up() { # wait_up URL
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  say "not answering: $1"; cat "$WORK/server.log" "$WORK/nginx.log" "$NGINX_PREFIX/error.log" >&2 2>/dev/null || true
  exit 1
}
wait_up "http://127.0.0.1:$APP_PORT/static"
wait_up "http://127.0.0.1:$NGINX_PORT/"

# Prime both caches, and check that the second answer comes from each cache.
curl -fsS -o /dev/null "http://127.0.0.1:$APP_PORT/swr"
curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/"
swr_status="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$APP_PORT/swr" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" { print $2 }')"
nginx_status="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" { print $2 }')"
say "primed: /swr Cache-Status: ${swr_status:-none}; nginx X-Cache-Status: ${nginx_status:-none}"

# ---- load ----------------------------------------------------------------------------------
to_ms() { # a wrk latency ("312.00us", "1.23ms", "1.01s") in milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n }'
}

declare -A RPS P50 P99 ERRS ALL_RPS ALL_P50 ALL_P99
run() { # run NAME URL: one wrk run, appended to the NAME's samples
  local name="$1" url="$2" out="$WORK/wrk.$1.txt"
  say "wrk: $name  $url  (${CONNECTIONS} connections, ${WRK_THREADS} thread(s), $DURATION)"
  "${LOAD_PIN[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$out"
  ALL_RPS[$name]+="$(awk '/^Requests\/sec:/ { print $2 }' "$out") "
  ALL_P50[$name]+="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")") "
  ALL_P99[$name]+="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")") "
  ERRS[$name]+="$(awk '/Non-2xx|Socket errors/ { sub(/^ +/, ""); printf "%s; ", $0 }' "$out")"
}
median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ROUNDS rounds over the four targets, the order rotated each round (noise on a shared machine
# then hits every target alike); the medians are reported.
TARGETS=(static swr nginx uncached)
declare -A URL=(
  [static]="http://127.0.0.1:$APP_PORT/static"
  [swr]="http://127.0.0.1:$APP_PORT/swr"
  [nginx]="http://127.0.0.1:$NGINX_PORT/"
  [uncached]="http://127.0.0.1:$APP_PORT/slow"
)
for ((round = 0; round < ROUNDS; round++)); do
  for ((i = 0; i < ${#TARGETS[@]}; i++)); do
    name="${TARGETS[$(( (i + round) % ${#TARGETS[@]} ))]}"
    run "$name" "${URL[$name]}"
  done
done
for name in "${TARGETS[@]}"; do
  RPS[$name]="$(median "${ALL_RPS[$name]}")"
  P50[$name]="$(median "${ALL_P50[$name]}")"
  P99[$name]="$(median "${ALL_P99[$name]}")"
done
STATS="$(curl -fsS "http://127.0.0.1:$APP_PORT/stats")"

# ---- report --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
echo
echo "== over HTTP on loopback: $(nproc) CPUs, server on CPUs '${SERVER_CPUS:-any}' (${SERVER_WORKERS} tokio workers; nginx 1 worker), wrk on '${LOAD_CPUS:-any}'"
echo "   wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS round(s), medians; body 1 KiB; origin 50 ms; Cache-Control: public, max-age=1, stale-while-revalidate=60"
printf '   %-36s %12s %10s %10s  %s\n' "target" "requests/s" "p50 ms" "p99 ms" "errors"
for name in static swr nginx uncached; do
  case "$name" in
    static) label="axum /static (no work, no cache)" ;;
    swr) label="axum /swr (50 ms behind SwrLayer)" ;;
    nginx) label="nginx proxy_cache -> axum /slow" ;;
    uncached) label="axum /slow (50 ms, no cache)" ;;
  esac
  printf '   %-36s %12s %10s %10s  %s\n' "$label" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${ERRS[$name]:-none}"
  [ "$ROUNDS" -gt 1 ] && printf '   %-36s %s\n' "" "requests/s per round: ${ALL_RPS[$name]}"
done
echo
echo "   ratios (throughput)"
echo "   swr / static   = $(ratio "${RPS[swr]}" "${RPS[static]}")   (target >= 0.90)"
echo "   swr / nginx    = $(ratio "${RPS[swr]}" "${RPS[nginx]}")   (target > 1)"
echo "   swr / uncached = $(ratio "${RPS[swr]}" "${RPS[uncached]}")"
echo "   ratios (latency, lower is better)"
echo "   p50 swr / static = $(ratio "${P50[swr]}" "${P50[static]}");  p99 swr / static = $(ratio "${P99[swr]}" "${P99[static]}")"
echo "   p50 swr / nginx  = $(ratio "${P50[swr]}" "${P50[nginx]}");  p99 swr / nginx  = $(ratio "${P99[swr]}" "${P99[nginx]}")"
echo
echo "   SwrLayer after the runs: $(tr '\n' ' ' <<<"$STATS")"

if [ "$MEMORY_PROBE" = "1" ]; then
  # Distinct keys through the real HTTP stack: what an entry costs once hyper's request buffers
  # are involved. /swr-owned copies the request's URI and headers out of hyper's read buffer
  # before SwrLayer sees them; /swr does not.
  get() { awk -v k="$2" '$1 == k { print $2 }' <<<"$1"; }
  echo
  echo "== memory over HTTP (bodies are static: all of an entry's bytes are overhead)"
  for route in swr swr-owned; do
    prefix=""
    [ "$route" = "swr-owned" ] && prefix="owned_"
    cat >"$WORK/distinct.lua" <<EOF
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/$route?id=" .. counter)
end
EOF
    before="$(curl -fsS "http://127.0.0.1:$APP_PORT/stats")"
    say "memory probe: distinct keys on /$route for 15s..."
    "${LOAD_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d15s -s "$WORK/distinct.lua" "http://127.0.0.1:$APP_PORT/" >/dev/null
    after="$(curl -fsS "http://127.0.0.1:$APP_PORT/stats")"
    entries=$(( $(get "$after" "${prefix}entries") - $(get "$before" "${prefix}entries") ))
    bytes=$(( $(get "$after" "${prefix}bytes") - $(get "$before" "${prefix}bytes") ))
    rss=$(( ($(get "$after" rss_kib) - $(get "$before" rss_kib)) * 1024 ))
    if [ "$entries" -gt 0 ]; then
      echo "   /$route: $entries new entries; cache's accounting $(( bytes / entries )) B/entry; process RSS growth $(( rss / entries )) B/entry"
    fi
  done
fi
