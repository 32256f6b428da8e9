#!/usr/bin/env bash
# Reference run: score nginx (a plain caching reverse proxy) with the same harness,
# to have a yardstick for tower-swr's score. See README.md in this folder.
#
#   tests/conformance/nginx.sh                 # full run, results in tests/conformance/out/nginx/
#   TEST_ID=vary-star tests/conformance/nginx.sh   # one test, verbose
#
# Installs nginx from the Debian packages if it is missing (needs root). The nginx config
# mirrors the one the suite publishes for nginx (docker/nginx/nginx.conf in the package):
# proxy_cache on, proxy_cache_revalidate on, no proxy_cache_valid (so freshness comes only
# from the origin's headers), listening on 127.0.0.1 only. Everything nginx writes (pid,
# cache, temp files, logs) lives in a temp dir under /tmp that is removed afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROXY_PORT="${PROXY_PORT:-8102}"
ORIGIN_PORT="${ORIGIN_PORT:-8100}"

log() { printf '[nginx.sh] %s\n' "$*" >&2; }

NGINX="$(command -v nginx || true)"
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
if [[ -z "$NGINX" ]]; then
  [[ "$(id -u)" == 0 ]] || { log "nginx is not installed and we are not root to install it"; exit 2; }
  log "installing nginx (apt-get)"
  apt-get update -qq
  # nginx-light exists up to Debian 12; later releases only have nginx
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
fi
log "using $("$NGINX" -v 2>&1)"

NGINX_DIR="$(mktemp -d /tmp/swr-nginx.XXXXXX)"
trap 'rm -rf "$NGINX_DIR"' EXIT
# nginx's workers run as an unprivileged user when started as root: let them reach the dir.
chmod 755 "$NGINX_DIR"

cat >"$NGINX_DIR/nginx.conf" <<EOF
worker_processes 1;
pid $NGINX_DIR/nginx.pid;
error_log stderr warn;

events {
    worker_connections 2048;
}

http {
    access_log $NGINX_DIR/access.log;
    client_body_temp_path $NGINX_DIR/client_body;
    proxy_temp_path $NGINX_DIR/proxy_temp;
    fastcgi_temp_path $NGINX_DIR/fastcgi_temp;
    uwsgi_temp_path $NGINX_DIR/uwsgi_temp;
    scgi_temp_path $NGINX_DIR/scgi_temp;

    proxy_cache_path $NGINX_DIR/cache levels=1:2 keys_zone=swr_test:8m max_size=100m inactive=600m;

    server {
        listen 127.0.0.1:$PROXY_PORT;

        location / {
            proxy_pass http://127.0.0.1:$ORIGIN_PORT;
            proxy_cache swr_test;
            proxy_cache_revalidate on;
        }
    }
}
EOF
"$NGINX" -t -q -e stderr -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf"

# The ratchet in baseline.txt is tower-swr's, not nginx's: don't apply it here.
rc=0
PROXY_CMD="exec '$NGINX' -e stderr -p '$NGINX_DIR' -c '$NGINX_DIR/nginx.conf' -g 'daemon off;'" \
  PROXY_PORT="$PROXY_PORT" ORIGIN_PORT="$ORIGIN_PORT" PROXY_WAIT="${PROXY_WAIT:-20}" \
  OUT_DIR="${OUT_DIR:-$HERE/out/nginx}" BASELINE_FILE="${NGINX_BASELINE_FILE:-/nonexistent}" \
  "$HERE/run.sh" || rc=$?
exit "$rc"
