#!/usr/bin/env bash
# What `make cluster-demo` runs: a three-node Ray cluster on this machine, the application deployed on it with
# Ray's `serve deploy` from deploy/serve-cluster.yaml, and a request to every model over HTTP.
#
#   head      `ray start --head`    resources {"head_node": 1}    Serve controller, HTTP proxy, Ingress
#   worker-1  `ray start --address` resources {"worker_node": 1}  model replicas
#   worker-2  `ray start --address` resources {"worker_node": 1}  model replicas
#
# Each node is a separate raylet with its own ports and temp dir under one work directory. Token authentication
# is on: a token is made for this cluster (in the work directory, never ~/.ray) and every Ray process and CLI
# here gets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH. Every node runs in a session of its own; stopping
# signals the processes of those sessions only (never `ray stop`, which would stop any other Ray on the machine).
#
# Usage: scripts/cluster_demo.sh [--once]   (--once: stop after the checks instead of serving until Ctrl-C)
# Environment (all optional): STEPSERVE_CLUSTER_PORT_BASE (26000: Ray's ports are taken from 26000-26099),
# STEPSERVE_CLUSTER_HTTP_PORT (18000), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
BASE=${STEPSERVE_CLUSTER_PORT_BASE:-26000}
HTTP_PORT=${STEPSERVE_CLUSTER_HTTP_PORT:-18000}
GCS_PORT=$((BASE + 79))
DASHBOARD_PORT=$((BASE + 65))
WORK=$(mktemp -d /tmp/stepserve-cluster-XXXXXX)
SESSIONS=()

"$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$WORK/auth_token"
chmod 600 "$WORK/auth_token"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$WORK/auth_token" RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset RAY_ADDRESS RAY_AUTH_TOKEN

stop_cluster() {
  [ ${#SESSIONS[@]} -eq 0 ] && return 0
  echo "stopping the cluster (sessions ${SESSIONS[*]}) ..."
  for s in "${SESSIONS[@]}"; do pkill -TERM -s "$s" 2>/dev/null || true; done
  for _ in $(seq 20); do
    left=0
    for s in "${SESSIONS[@]}"; do pgrep -s "$s" >/dev/null && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.5
  done
  for s in "${SESSIONS[@]}"; do pkill -KILL -s "$s" 2>/dev/null || true; done
  SESSIONS=()
  echo "stopped; logs in $WORK"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# start_node NAME INDEX RESOURCES [ray start args...]: one `ray start --block` in a new session (its pid is the
# session id); INDEX picks the node's ports from the base.
start_node() {
  local name=$1 i=$2 resources=$3
  shift 3
  local p=$((BASE + 10 * i))
  setsid "$BIN/ray" start --block --node-ip-address=127.0.0.1 --node-name="$name" --temp-dir="$WORK/$name" \
    --num-cpus=2 --resources="$resources" --object-store-memory=200000000 \
    --dashboard-agent-listen-port=$((p + 1)) --dashboard-agent-grpc-port=$((p + 2)) \
    --runtime-env-agent-port=$((p + 3)) --metrics-export-port=$((p + 4)) \
    --node-manager-port=0 --object-manager-port=0 --min-worker-port=0 --max-worker-port=0 \
    --disable-usage-stats "$@" > "$WORK/$name.log" 2>&1 &
  SESSIONS+=("$!")
  disown "$!"  # no job-control notice when the cluster is stopped
  echo "$name: ray start (pid/session $!, metrics http://127.0.0.1:$((p + 4))/metrics, log $WORK/$name.log)"
}

api() {  # GET on the dashboard's REST API, with the cluster's token
  curl -sf -H "Authorization: Bearer $(cat "$WORK/auth_token")" "http://127.0.0.1:$DASHBOARD_PORT$1"
}

wait_nodes() {
  for _ in $(seq 120); do
    n=$(api "/api/v0/nodes?limit=100" 2>/dev/null | "$PYTHON" -c \
      'import json,sys; print(sum(x["state"]=="ALIVE" for x in json.load(sys.stdin)["data"]["result"]["result"]))' \
      2>/dev/null || echo 0)
    [ "$n" -ge "$1" ] && return 0
    sleep 1
  done
  echo "error: $1 Ray nodes not alive after 120 s; see the logs in $WORK" >&2
  return 1
}

start_node head 0 '{"head_node": 1}' --head --port=$GCS_PORT --include-dashboard=true \
  --dashboard-host=127.0.0.1 --dashboard-port=$DASHBOARD_PORT --ray-client-server-port=$((BASE + 9))
wait_nodes 1
# One node at a time: `ray start` gives up when its raylet has not registered within 30 s, which a busy
# 2-core machine can exceed when several start at once.
start_node worker-1 1 '{"worker_node": 1}' --address=127.0.0.1:$GCS_PORT
wait_nodes 2
start_node worker-2 2 '{"worker_node": 1}' --address=127.0.0.1:$GCS_PORT
wait_nodes 3

CONFIG=deploy/serve-cluster.yaml
if [ "$HTTP_PORT" != 18000 ]; then
  CONFIG="$WORK/serve-cluster.yaml"
  "$PYTHON" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); c["http_options"]["port"] = int(sys.argv[2]);
yaml.safe_dump(c, open(sys.argv[3], "w"), sort_keys=False)' deploy/serve-cluster.yaml "$HTTP_PORT" "$CONFIG"
fi
echo "serve deploy $CONFIG ..."
"$BIN/serve" deploy --address "http://127.0.0.1:$DASHBOARD_PORT" "$CONFIG"

URL="http://127.0.0.1:$HTTP_PORT"
for i in $(seq 300); do
  curl -sf "$URL/healthz" >/dev/null 2>&1 && break
  [ "$i" -eq 300 ] && { echo "error: $URL/healthz not answering after 300 s" >&2; exit 1; }
  sleep 1
done
for m in moons-ddpm moons-fm digits-ddpm digits-fm; do
  sampler=fm-euler; [[ $m == *ddpm ]] && sampler=ddim
  printf '%-12s ' "$m"
  curl -sf -X POST "$URL/v1/samples" -H 'content-type: application/json' \
    -d "{\"model\": \"$m\", \"sampler\": \"$sampler\", \"steps\": 10, \"num_samples\": 4, \"seed\": 0}" |
    "$PYTHON" -c 'import json,sys; b=json.load(sys.stdin); print("200 shape", b["shape"], "nfe", b["nfe"])'
done
echo "replicas by node:"
nodes=$(api "/api/v0/nodes?limit=100&detail=true")
api "/api/v0/actors?limit=1000&detail=true&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE" |
  "$PYTHON" -c '
import json, sys
nodes = {n["node_id"]: n["node_name"] for n in json.loads(sys.argv[1])["data"]["result"]["result"]}
for a in json.load(sys.stdin)["data"]["result"]["result"]:
    name = a.get("name") or ""
    if name.startswith("SERVE_REPLICA::"):
        print("  %-12s on %s" % (name.split("#")[1], nodes.get(a["node_id"], a["node_id"])))' "$nodes" | sort

echo
echo "stepserve on a 3-node Ray cluster: $URL (try: curl $URL/v1/models)"
echo "  serve status:  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$WORK/auth_token $BIN/serve status --address http://127.0.0.1:$DASHBOARD_PORT"
echo "  lose a worker: pkill -KILL -s ${SESSIONS[2]}   (worker-2's session; Serve moves its replicas to worker-1)"
if [ $ONCE -eq 1 ]; then
  exit 0
fi
echo "Ctrl-C stops the cluster."
while true; do sleep 1; done
