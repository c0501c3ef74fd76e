"""onnxruntime session options for the exported nets, in one place: the serving backend, export's parity
check and the benchmarks all run the same `.onnx` file under the same options.

One intra-op pool sized explicitly (a served replica gets the CPUs Ray gave it, not every core), no
inter-op parallelism (the nets are one chain of ops), full graph optimisation by default.
"""

from __future__ import annotations

import os

import onnxruntime as ort

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_threads() -> int:
    """CPUs this process may run on (respects taskset / cgroup affinity, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(num_threads: int | None = None, optimization_level: str = "all") -> ort.SessionOptions:
    """Options for a session on one of the project's nets; `num_threads` None: every CPU available."""
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(
            f"optimization_level: unknown {optimization_level!r}; expected one of {list(OPTIMIZATION_LEVELS)}"
        )
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPTIMIZATION_LEVELS[optimization_level]
    so.intra_op_num_threads = num_threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def cpu_session(path: str | os.PathLike, num_threads: int | None = None) -> ort.InferenceSession:
    """A CPU session on `path` with the project's options."""
    return ort.InferenceSession(str(path), session_options(num_threads), providers=["CPUExecutionProvider"])
