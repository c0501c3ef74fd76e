#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the CUDA-marked tests, then a short GPU benchmark; results as JSON.
#
#   scripts/gpu_check.sh [OUT_DIR]          (default bench-results/gpu)
#
# Needs a CUDA build of torch; onnxruntime-gpu and tensorrt (the `gpu` extra, installed as docs/export.md
# says) add their variants, which are otherwise skipped with the reason recorded.
# Writes OUT_DIR/gpu-check.json (environment, test outcome) and OUT_DIR/gpu-bench.json (latencies).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench-results/gpu}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT_DIR"

"$PYTHON" - <<'EOF' || { echo "error: no CUDA GPU is visible to torch; nothing to check" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

# Only the files that hold CUDA tests: collecting the whole suite would import Ray / FastAPI, which a bare
# GPU image may lack and these tests do not need.
CUDA_TEST_FILES=$(grep -rl "pytest.mark.cuda" tests --include="test_*.py")
"$PYTHON" -m pytest -m cuda -q -p no:cacheprovider $CUDA_TEST_FILES --junitxml "$OUT_DIR/cuda-tests.xml" \
    2>&1 | tee "$OUT_DIR/cuda-tests.txt"
tests_rc=${PIPESTATUS[0]}

"$PYTHON" -m bench.gpu --out "$OUT_DIR/gpu-bench.json" > "$OUT_DIR/gpu-bench.log" 2>&1
bench_rc=$?

"$PYTHON" - "$OUT_DIR" "$tests_rc" "$bench_rc" <<'EOF'
import importlib.util, json, sys, xml.etree.ElementTree as ET
from pathlib import Path
import torch

out, tests_rc, bench_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
suite = ET.parse(out / "cuda-tests.xml").getroot()
suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
summary = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "onnxruntime_providers": __import__("onnxruntime").get_available_providers(),
    "tensorrt": importlib.util.find_spec("tensorrt") is not None,
    "cuda_tests": {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")},
    "cuda_tests_exit_code": tests_rc,
    "bench_exit_code": bench_rc,
    "bench": "gpu-bench.json" if bench_rc == 0 else "failed: see gpu-bench.log",
}
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
