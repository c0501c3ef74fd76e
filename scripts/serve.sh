#!/usr/bin/env bash
# What `make serve` runs: make sure the four default models and the distilled moons-fm-reflow exist (training
# or distilling any that is missing, with a progress bar), then serve them on a local Ray: deploy/serve.yaml through Ray's `serve run`, started
# by serving/serve_cli.py, which waits until the service answers and prints a curl example and the
# metrics URL. Ctrl-C stops everything.
#
# Environment (all optional): STEPSERVE_MODELS_DIR (default models), STEPSERVE_PORT (8000),
# STEPSERVE_METRICS_PORT (8080), STEPSERVE_TRAIN_MAX_STEPS (cap training of missing models: quick runs),
# STEPSERVE_DISTILL_PAIRS (couplings drawn for a missing distilled model: quick runs),
# STEPSERVE_INGRESS (haproxy, the default: HAProxy straight to the Ingress replicas; serve: Ray Serve's
# Python HTTP proxy; serving/serve_cli.py --help), STEPSERVE_CONFIG (the Ray Serve config, default
# deploy/serve.yaml; deploy/serve-one-hop.yaml serves one model in one hop, the shortest path).
# serve_cli binds Ray to 127.0.0.1 and caps Ray's log files (RAY_ROTATION_MAX_BYTES, default 64 MiB here,
# RAY_ROTATION_BACKUP_COUNT, default 3; set either to override); docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MODELS_DIR=${STEPSERVE_MODELS_DIR:-models}

for m in moons-ddpm moons-fm digits-ddpm digits-fm; do
  if [ ! -f "$MODELS_DIR/$m/manifest.json" ]; then
    echo "model $m is missing from $MODELS_DIR: training it now (configs/$m.yaml)"
    "$PYTHON" -m training --config "configs/$m.yaml" --out "$MODELS_DIR/$m" \
      ${STEPSERVE_TRAIN_MAX_STEPS:+--max-steps "$STEPSERVE_TRAIN_MAX_STEPS"}
  fi
done
for m in moons-fm-reflow; do  # distilled from a default model (python -m distill)
  if [ ! -f "$MODELS_DIR/$m/manifest.json" ]; then
    echo "model $m is missing from $MODELS_DIR: distilling it now (configs/$m.yaml); it serves without a quality" \
      "profile until 'python -m serving profile --checkpoint $MODELS_DIR/$m' makes one"
    "$PYTHON" -m distill --config "configs/$m.yaml" --teacher "$MODELS_DIR/${m%-reflow}" --out "$MODELS_DIR/$m" \
      ${STEPSERVE_TRAIN_MAX_STEPS:+--max-steps "$STEPSERVE_TRAIN_MAX_STEPS"} \
      ${STEPSERVE_DISTILL_PAIRS:+--pairs "$STEPSERVE_DISTILL_PAIRS"}
  fi
done

exec "$PYTHON" -m serving.serve_cli --config "${STEPSERVE_CONFIG:-deploy/serve.yaml}" --models-dir "$MODELS_DIR" \
  --port "${STEPSERVE_PORT:-8000}" --metrics-port "${STEPSERVE_METRICS_PORT:-8080}" \
  --ingress "${STEPSERVE_INGRESS:-haproxy}"
