#!/usr/bin/env bash
# Over-HTTP benchmark of tower-swr (issue 6, item 6; issue 17, item 3). Not run in CI; see
# benches/README.md ("Over HTTP").
#
# Starts on loopback: the bench server (benches/http/server: an axum app with /static, /swr =
# a 50 ms handler behind SwrLayer, /slow = the same handler uncached), nginx as a caching
# reverse proxy in front of /slow (nginx.conf.template: proxy_cache, proxy_cache_use_stale
# updating, proxy_cache_background_update on, proxy_cache_lock on) and Varnish in front of the
# same /slow (varnish.vcl.template: ttl and grace from the origin's Cache-Control). All of them
# are pinned to SERVER_CPUS, wrk to LOAD_CPUS. Each round loads every target once with the
# same wrk command (threads, connections, duration), the order rotated from round to round;
# the report gives per target the median and min..max over the rounds of requests/s, p50 and
# p99, the ratios, and a markdown summary table. A run whose /static rounds differ by more
# than SPREAD_LIMIT (max/min) is DISCARDED: flagged, and the script exits 3.
# Stops everything it started (trap on exit).
#
# Environment (defaults): DURATION=5s CONNECTIONS=64 WRK_THREADS=1 ROUNDS=3 (at least 3)
# WARMUP=1s (one unrecorded wrk run per target before round 1; 0 = none) SPREAD_LIMIT=1.20
# SERVER_CPUS=0 LOAD_CPUS=1 (taskset lists; both must be set and exist)
# APP_PORT NGINX_PORT VARNISH_PORT (empty: free ports are picked)
# MEMORY_PROBE=0 (1: afterwards, fill /swr with distinct keys and report RSS per entry).
# Exit status: 0 a kept run, 3 discarded (too much spread), anything else an error.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DURATION="${DURATION:-5s}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-1s}"
SPREAD_LIMIT="${SPREAD_LIMIT:-1.20}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
APP_PORT="${APP_PORT:-}"
NGINX_PORT="${NGINX_PORT:-}"
VARNISH_PORT="${VARNISH_PORT:-}"
MEMORY_PROBE="${MEMORY_PROBE:-0}"

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || [ "$ROUNDS" -lt 3 ]; then
  die "ROUNDS=$ROUNDS: at least 3 rounds (the spread check needs them)"
fi

# ---- what it needs -------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need_apt+=(varnish)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing: ${need_apt[*]}"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${need_apt[*]} by hand"
  [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install ${need_apt[*]} by hand"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
VARNISHD="$(command -v varnishd || echo /usr/sbin/varnishd)"
VARNISHSTAT="$(command -v varnishstat || echo /usr/bin/varnishstat)"
command -v cargo >/dev/null 2>&1 || die "cargo is needed to build the bench server (https://rustup.rs)"

# ---- pinning -------------------------------------------------------------------------------
# Command prefixes, arrays rather than functions, so that `PREFIX... CMD &` leaves $! = the pid
# of CMD itself (taskset execs it). Children (nginx's worker, Varnish's child) inherit the mask.
if [ -z "$SERVER_CPUS" ] || [ -z "$LOAD_CPUS" ]; then
  die "SERVER_CPUS and LOAD_CPUS must both be set (the run pins)"
fi
taskset -c "$SERVER_CPUS" true 2>/dev/null || die "cannot pin to SERVER_CPUS=$SERVER_CPUS ($(nproc) CPUs here)"
taskset -c "$LOAD_CPUS" true 2>/dev/null || die "cannot pin to LOAD_CPUS=$LOAD_CPUS ($(nproc) CPUs here)"
SERVER_PIN=(taskset -c "$SERVER_CPUS")
LOAD_PIN=(taskset -c "$LOAD_CPUS")
cpu_count() { awk -F, '{ n = 0; for (i = 1; i <= NF; i++) { if (split($i, r, "-") == 2) n += r[2] - r[1] + 1; else n++ } print n }' <<<"$1"; }
SERVER_WORKERS="$(cpu_count "$SERVER_CPUS")"

# ---- build ---------------------------------------------------------------------------------
say "building the bench server (cargo build --release)..."
# The executable's path from cargo itself: CARGO_TARGET_DIR or a config may move it.
SERVER_BIN="$(cargo build --release --message-format=json-render-diagnostics \
  --manifest-path "$HERE/server/Cargo.toml" |
  grep -o '"executable":"[^"]*tower-swr-http-bench-server"' | tail -n 1 | sed 's/^"executable":"//; s/"$//')"
[ -n "$SERVER_BIN" ] || die "cargo named no executable for the bench server"
[ -x "$SERVER_BIN" ] || die "cannot find the bench server's executable after the build"

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
VARNISH_PID=""
stop() { # stop PID SIGNAL: signal, wait up to 5 s, then KILL; reaps it
  local pid="$1" sig="$2"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}
cleanup() {
  set +e
  stop "$VARNISH_PID" TERM
  stop "$NGINX_PID" TERM
  stop "$SERVER_PID" INT
  rm -rf "$WORK" "$NGINX_PREFIX"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free ports below the ephemeral range (wrk's and the proxies' outgoing connections take theirs
# from it), checked by connecting; each server is then checked to be the one answering.
EPHEMERAL_LOW="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (EPHEMERAL_LOW - 10000) ))
    case "$p" in "$APP_PORT" | "$NGINX_PORT" | "$VARNISH_PORT") continue ;; esac
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}
[ -n "$APP_PORT" ] || APP_PORT="$(pick_port)"
[ -n "$NGINX_PORT" ] || NGINX_PORT="$(pick_port)"
[ -n "$VARNISH_PORT" ] || VARNISH_PORT="$(pick_port)"
for port in "$APP_PORT" "$NGINX_PORT" "$VARNISH_PORT"; do
  ! port_busy "$port" || die "port $port is already in use on 127.0.0.1"
done
say "ports: app $APP_PORT, nginx $NGINX_PORT, varnish $VARNISH_PORT"

"${SERVER_PIN[@]}" "$SERVER_BIN" "127.0.0.1:$APP_PORT" "$SERVER_WORKERS" 2>"$WORK/server.log" &
SERVER_PID=$!

USER_LINE=""
[ "$(id -u)" -eq 0 ] && USER_LINE="user root;"
mkdir -p "$NGINX_PREFIX/cache"
sed -e "s#@PREFIX@#$NGINX_PREFIX#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    -e "s#@APP_PORT@#$APP_PORT#g" -e "s#@USER_LINE@#$USER_LINE#g" \
    "$HERE/nginx.conf.template" >"$NGINX_PREFIX/nginx.conf"
"${SERVER_PIN[@]}" "$NGINX" -e "$NGINX_PREFIX/error.log" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" \
  2>"$WORK/nginx.log" &
NGINX_PID=$!

# Varnish. As root varnishd switches to its own users (the unix jail: varnish, vcache), which
# must be able to read the VCL and the work directory; as anyone else it keeps that user (jail
# none). -F: in the foreground (so $! is its manager, which stops its child on TERM); one
# thread pool, as there is one server CPU; malloc storage (in memory, like the others).
chmod 755 "$WORK"
sed -e "s#@APP_PORT@#$APP_PORT#g" "$HERE/varnish.vcl.template" >"$WORK/varnish.vcl"
chmod 644 "$WORK/varnish.vcl"
VARNISH_NAME="$WORK/varnish"
"${SERVER_PIN[@]}" "$VARNISHD" -F -a "127.0.0.1:$VARNISH_PORT" -f "$WORK/varnish.vcl" \
  -s malloc,256m -n "$VARNISH_NAME" -p thread_pools=1 >"$WORK/varnish.log" 2>&1 &
VARNISH_PID=$!

show_logs() {
  for f in "$WORK/server.log" "$WORK/nginx.log" "$NGINX_PREFIX/error.log" "$WORK/varnish.log"; do
    [ -s "$f" ] && { say "--- $f"; cat "$f" >&2; }
  done
  return 0
}
wait_up() { # wait_up PID URL: until URL answers 2xx (varnishd compiles its VCL first: ~2 s)
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || { say "exited before answering: $2"; show_logs; exit 1; }
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  say "not answering: $2"; show_logs; exit 1
}
wait_up "$SERVER_PID" "http://127.0.0.1:$APP_PORT/static"
wait_up "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/"
wait_up "$VARNISH_PID" "http://127.0.0.1:$VARNISH_PORT/slow"

# Prime the three caches, and check that the second answer comes from each cache (and from the
# process started here: the headers only it sets).
header() { tr -d '\r' | awk -F': ' -v h="$1" 'tolower($1) == tolower(h) { print $2 }'; }
curl -fsS -o /dev/null "http://127.0.0.1:$APP_PORT/swr"
curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/"
curl -fsS -o /dev/null "http://127.0.0.1:$VARNISH_PORT/slow"
swr_headers="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$APP_PORT/swr")"
nginx_headers="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/")"
varnish_headers="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$VARNISH_PORT/slow")"
swr_status="$(header cache-status <<<"$swr_headers")"
nginx_status="$(header x-cache-status <<<"$nginx_headers")"
varnish_status="$(header x-cache <<<"$varnish_headers")"
varnish_ttl="$(header x-varnish-ttl <<<"$varnish_headers")"
varnish_grace="$(header x-varnish-grace <<<"$varnish_headers")"
say "primed: /swr Cache-Status: ${swr_status:-none}; nginx X-Cache-Status: ${nginx_status:-none}; varnish X-Cache: ${varnish_status:-none} (ttl ${varnish_ttl:-?} s, grace ${varnish_grace:-?} s from the origin's Cache-Control)"
case "$swr_status" in *hit*) ;; *) die "/swr: the second answer is not a hit (Cache-Status: ${swr_status:-none})" ;; esac
# (nginx says UPDATING when its entry went stale (max-age=1) while varnishd
# compiled its VCL: served from the cache all the same.)
case "$nginx_status" in HIT | UPDATING | STALE) ;; *) die "nginx: the second answer is not from its cache (${nginx_status:-none})" ;; esac
[ "$varnish_status" = HIT ] || die "varnish: the second answer is not a HIT (${varnish_status:-none})"
# Varnish must have taken ttl and grace from max-age=1 and stale-while-revalidate=60.
if [ "$varnish_ttl" != 1.000 ] || [ "$varnish_grace" != 60.000 ]; then
  die "varnish: ttl ${varnish_ttl:-?} / grace ${varnish_grace:-?}, expected 1.000 / 60.000 from the origin's Cache-Control"
fi

children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }
pinned() { # pinned PID: the CPU list of PID and of its child processes
  local pid="$1" out kid
  out="$(taskset -pc "$pid" 2>/dev/null | sed 's/.*: //')"
  for kid in $(children "$pid"); do
    out+=", child $(taskset -pc "$kid" 2>/dev/null | sed 's/.*: //')"
  done
  echo "$out"
}
PINNING="server $(pinned "$SERVER_PID"); nginx $(pinned "$NGINX_PID"); varnishd $(pinned "$VARNISH_PID")"
say "CPUs allowed: $PINNING; wrk $LOAD_CPUS"

# ---- load ----------------------------------------------------------------------------------
to_ms() { # a wrk latency ("312.00us", "1.23ms", "1.01s") in milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n }'
}

TARGETS=(static swr nginx varnish uncached)
declare -A URL=(
  [static]="http://127.0.0.1:$APP_PORT/static"
  [swr]="http://127.0.0.1:$APP_PORT/swr"
  [nginx]="http://127.0.0.1:$NGINX_PORT/"
  [varnish]="http://127.0.0.1:$VARNISH_PORT/slow"
  [uncached]="http://127.0.0.1:$APP_PORT/slow"
)
declare -A LABEL=(
  [static]="axum /static (no work, no cache)"
  [swr]="axum /swr (50 ms behind SwrLayer)"
  [nginx]="nginx proxy_cache -> axum /slow"
  [varnish]="Varnish -> axum /slow"
  [uncached]="axum /slow (50 ms, no cache)"
)
declare -A ALL_RPS ALL_P50 ALL_P99 ALL_CPU ERRS
# Server-side CPU time per request: less sensitive than requests/s to how much of the server
# CPU other processes take (the scheduler's share changes with the machine's load; the work per
# request does not, much). Summed over the processes that serve the target: the bench server
# (for nginx and Varnish too: it answers their refreshes), nginx's master and worker, varnishd's
# manager and child. From /proc/PID/stat (utime + stime, all threads), in clock ticks.
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
pids_of() { # pids_of NAME: the processes serving NAME
  case "$1" in
    nginx) echo "$SERVER_PID" "$NGINX_PID" "$(children "$NGINX_PID")" ;;
    varnish) echo "$SERVER_PID" "$VARNISH_PID" "$(children "$VARNISH_PID")" ;;
    *) echo "$SERVER_PID" ;;
  esac
}
ticks() { # ticks PID...: their CPU time so far (the comm field may hold spaces: cut after ") ")
  local total=0 pid t
  for pid in "$@"; do
    t="$(sed 's/^.*) //' /proc/"$pid"/stat 2>/dev/null | awk '{ print $12 + $13 }')" || t=0
    total=$(( total + ${t:-0} ))
  done
  echo "$total"
}
wrk_once() { # wrk_once NAME DURATION OUT
  "${LOAD_PIN[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency "${URL[$1]}" >"$3"
}
run() { # run NAME ROUND: one wrk run, appended to NAME's samples (one per round, in order)
  local name="$1" out="$WORK/wrk.$1.$2.txt"
  say "round $(( $2 + 1 ))/$ROUNDS  wrk: $name  ${URL[$name]}"
  local pids before after requests
  pids="$(pids_of "$name")"
  # shellcheck disable=SC2086 # a list of pids
  before="$(ticks $pids)"
  wrk_once "$name" "$DURATION" "$out"
  # shellcheck disable=SC2086
  after="$(ticks $pids)"
  requests="$(awk '/ requests in / { print $1 }' "$out")"
  ALL_CPU[$name]+="$(awk -v t=$(( after - before )) -v hz="$CLK_TCK" -v n="${requests:-0}" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }') "
  ALL_RPS[$name]+="$(awk '/^Requests\/sec:/ { print $2 }' "$out") "
  ALL_P50[$name]+="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")") "
  ALL_P99[$name]+="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")") "
  ERRS[$name]+="$(awk '/Non-2xx|Socket errors/ { sub(/^ +/, ""); printf "round %d: %s; ", r, $0 }' r="$(( $2 + 1 ))" "$out")"
}

LOAD_BEFORE="$(uptime)"
if [ "$WARMUP" != 0 ]; then
  for name in "${TARGETS[@]}"; do
    say "warm-up  wrk: $name ($WARMUP, not recorded)"
    wrk_once "$name" "$WARMUP" /dev/null
  done
fi
# Interleaved: every round runs every target once, the order rotated by one each round, so a
# burst of load from another process lands on different targets in different rounds.
for ((round = 0; round < ROUNDS; round++)); do
  for ((i = 0; i < ${#TARGETS[@]}; i++)); do
    run "${TARGETS[$(( (i + round) % ${#TARGETS[@]} ))]}" "$round"
  done
done
LOAD_AFTER="$(uptime)"
STATS="$(curl -fsS "http://127.0.0.1:$APP_PORT/stats")"
VSTATS="$("$VARNISHSTAT" -n "$VARNISH_NAME" -1 \
  -f MAIN.cache_hit -f MAIN.cache_hit_grace -f MAIN.cache_miss -f MAIN.backend_req 2>/dev/null |
  awk '{ sub(/^MAIN\./, "", $1); printf "%s %s  ", $1, $2 }')" || VSTATS="(varnishstat failed)"

# ---- numbers -------------------------------------------------------------------------------
# summary LIST: "median min max" of a space-separated list
summary() {
  tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", m, v[1], v[NR] }'
}
# per_round A B: the per-round ratios A_i / B_i of two lists of the same length
per_round() {
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= n; i++) printf "%.3f ", (y[i] > 0 ? x[i] / y[i] : 0) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { printf ("%." d "f"), v }'; }

declare -A RPS_MED RPS_MIN RPS_MAX P50_MED P50_MIN P50_MAX P99_MED P99_MIN P99_MAX CPU_MED CPU_MIN CPU_MAX SPREAD
for name in "${TARGETS[@]}"; do
  read -r "RPS_MED[$name]" "RPS_MIN[$name]" "RPS_MAX[$name]" <<<"$(summary "${ALL_RPS[$name]}")"
  read -r "P50_MED[$name]" "P50_MIN[$name]" "P50_MAX[$name]" <<<"$(summary "${ALL_P50[$name]}")"
  read -r "P99_MED[$name]" "P99_MIN[$name]" "P99_MAX[$name]" <<<"$(summary "${ALL_P99[$name]}")"
  read -r "CPU_MED[$name]" "CPU_MIN[$name]" "CPU_MAX[$name]" <<<"$(summary "${ALL_CPU[$name]}")"
  SPREAD[$name]="$(ratio "${RPS_MAX[$name]}" "${RPS_MIN[$name]}")"
done
DISCARDED=0
gt "${SPREAD[static]}" "$SPREAD_LIMIT" && DISCARDED=1

# ---- report --------------------------------------------------------------------------------
COMMIT="$(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$COMMIT" != unknown ] && ! git -C "$HERE" diff --quiet HEAD -- 2>/dev/null; then COMMIT+="-dirty"; fi
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
load_of() { echo "${1##*load average: }"; }
echo
echo "== over HTTP on loopback, $DATE, commit $COMMIT, $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null))"
echo "   load average (1, 5, 15 min) before: $(load_of "$LOAD_BEFORE"); after: $(load_of "$LOAD_AFTER")"
echo "   pinned: server side (axum ${SERVER_WORKERS} tokio worker(s), nginx 1 worker, varnishd 1 thread pool) on CPUs $SERVER_CPUS, wrk on $LOAD_CPUS"
echo "   ($PINNING)"
echo "   every target: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency; $ROUNDS interleaved rounds ($( [ "$WARMUP" = 0 ] && echo "no warm-up" || echo "first a $WARMUP warm-up each")); median (min..max) over the rounds"
echo "   body 1 KiB; origin 50 ms; Cache-Control: public, max-age=1, stale-while-revalidate=60"
printf '   %-34s %26s %7s %22s %22s %22s  %s\n' "target" "requests/s" "max/min" "p50 ms" "p99 ms" "server CPU us/req" "errors"
for name in "${TARGETS[@]}"; do
  printf '   %-34s %26s %7s %22s %22s %22s  %s\n' "${LABEL[$name]}" \
    "$(fmt "${RPS_MED[$name]}") ($(fmt "${RPS_MIN[$name]}")..$(fmt "${RPS_MAX[$name]}"))" "${SPREAD[$name]}" \
    "$(fmt "${P50_MED[$name]}" 2) ($(fmt "${P50_MIN[$name]}" 2)..$(fmt "${P50_MAX[$name]}" 2))" \
    "$(fmt "${P99_MED[$name]}" 2) ($(fmt "${P99_MIN[$name]}" 2)..$(fmt "${P99_MAX[$name]}" 2))" \
    "$(fmt "${CPU_MED[$name]}" 1) ($(fmt "${CPU_MIN[$name]}" 1)..$(fmt "${CPU_MAX[$name]}" 1))" \
    "${ERRS[$name]:-none}"
done
for name in "${TARGETS[@]}"; do
  printf '   %-10s requests/s per round: %s\n' "$name" "${ALL_RPS[$name]}"
done

# ratio_line BASE: "ratio of medians (per-round min..max)" of /swr over BASE, and a verdict
declare -A RATIO RATIO_MIN RATIO_MAX
for base in static nginx varnish uncached; do
  RATIO[$base]="$(ratio "${RPS_MED[swr]}" "${RPS_MED[$base]}")"
  read -r _ "RATIO_MIN[$base]" "RATIO_MAX[$base]" <<<"$(summary "$(per_round "${ALL_RPS[swr]}" "${ALL_RPS[$base]}")")"
done
verdict() { # verdict BASE OP LIMIT
  local base="$1" op="$2" limit="$3"
  if "$op" "${RATIO[$base]}" "$limit"; then
    if "$op" "${RATIO_MIN[$base]}" "$limit"; then echo "yes"; else echo "yes on the median, not in every round"; fi
  else
    if "$op" "${RATIO_MAX[$base]}" "$limit"; then echo "**no** (only in some rounds)"; else echo "**no**"; fi
  fi
}
echo
echo "   ratios of the medians (throughput; per-round ratios min..max)"
for base in static nginx varnish uncached; do
  printf '   swr / %-9s = %s (%s..%s)\n' "$base" "${RATIO[$base]}" "${RATIO_MIN[$base]}" "${RATIO_MAX[$base]}"
done
echo "   latency, /swr over each (lower is better): p50 static $(ratio "${P50_MED[swr]}" "${P50_MED[static]}"), nginx $(ratio "${P50_MED[swr]}" "${P50_MED[nginx]}"), varnish $(ratio "${P50_MED[swr]}" "${P50_MED[varnish]}");" \
  "p99 static $(ratio "${P99_MED[swr]}" "${P99_MED[static]}"), nginx $(ratio "${P99_MED[swr]}" "${P99_MED[nginx]}"), varnish $(ratio "${P99_MED[swr]}" "${P99_MED[varnish]}")"
echo
echo "   SwrLayer after the runs: $(tr '\n' ' ' <<<"$STATS")"
echo "   Varnish after the runs: $VSTATS"

echo
if [ "$DISCARDED" = 1 ]; then
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!! DISCARDED: /static's rounds differ by ${SPREAD[static]}x (max/min > $SPREAD_LIMIT): the machine's"
  echo "!!! load changed during the run; the numbers below are NOT a result. Rerun on a quieter machine."
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo
  echo "### Over HTTP — DISCARDED run ($DATE, commit \`$COMMIT\`)"
else
  echo "### Over HTTP ($DATE, commit \`$COMMIT\`)"
fi
echo
echo "Load average (1, 5, 15 min) before the run: $(load_of "$LOAD_BEFORE"); after: $(load_of "$LOAD_AFTER")." \
  "$(nproc) CPUs; server side on CPU $SERVER_CPUS, wrk on CPU $LOAD_CPUS; wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION per target," \
  "$ROUNDS interleaved rounds; ratios of the median requests/s, per-round min..max in brackets."
echo
echo "| what | measured | target | met? |"
echo "|---|---|---|---|"
echo "| \`/swr\` / \`/static\` (requests/s) | **${RATIO[static]}** (${RATIO_MIN[static]}..${RATIO_MAX[static]}); $(fmt "${RPS_MED[swr]}") vs $(fmt "${RPS_MED[static]}") | ≥ 0.90 | $(verdict static ge 0.90) |"
echo "| \`/swr\` / nginx \`proxy_cache\` | **${RATIO[nginx]}** (${RATIO_MIN[nginx]}..${RATIO_MAX[nginx]}); nginx $(fmt "${RPS_MED[nginx]}") | > 1 | $(verdict nginx gt 1) |"
echo "| \`/swr\` / Varnish | **${RATIO[varnish]}** (${RATIO_MIN[varnish]}..${RATIO_MAX[varnish]}); Varnish $(fmt "${RPS_MED[varnish]}") | > 1 | $(verdict varnish gt 1) |"
echo "| p50 / p99 (ms, median of rounds): \`/static\`, \`/swr\`, nginx, Varnish | $(fmt "${P50_MED[static]}" 2) / $(fmt "${P99_MED[static]}" 2), $(fmt "${P50_MED[swr]}" 2) / $(fmt "${P99_MED[swr]}" 2), $(fmt "${P50_MED[nginx]}" 2) / $(fmt "${P99_MED[nginx]}" 2), $(fmt "${P50_MED[varnish]}" 2) / $(fmt "${P99_MED[varnish]}" 2) | reported | — |"
echo "| server-side CPU per request (µs, median of rounds): \`/static\`, \`/swr\`, nginx (+ origin), Varnish (+ origin) | $(fmt "${CPU_MED[static]}" 1), $(fmt "${CPU_MED[swr]}" 1), $(fmt "${CPU_MED[nginx]}" 1), $(fmt "${CPU_MED[varnish]}" 1) | reported | — |"
if [ "$DISCARDED" = 1 ]; then
  echo "| \`/static\` spread over the rounds (max/min) | **${SPREAD[static]}** | ≤ $SPREAD_LIMIT | **no: DISCARDED** |"
else
  echo "| \`/static\` spread over the rounds (max/min) | ${SPREAD[static]} | ≤ $SPREAD_LIMIT (else discarded) | yes |"
fi

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

if [ "$DISCARDED" = 1 ]; then
  say "DISCARDED: /static max/min ${SPREAD[static]} > $SPREAD_LIMIT"
  exit 3
fi
