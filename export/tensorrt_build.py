"""Build a TensorRT engine (.plan) from a checkpoint's ONNX export.

Written against TensorRT's documented Python API (10.x and 11.x): `trt.Builder` -> network (explicit
batch is the only mode since 10.0, hence `create_network(0)`) -> `trt.OnnxParser.parse_from_file` ->
builder config with a workspace pool limit, one optimization profile (min / opt / max batch on x, t, y)
and a timing cache loaded before and saved after the build -> `build_serialized_network`.

fp16: TensorRT 10.x takes `BuilderFlag.FP16` (weak typing). TensorRT 11 removed weak typing; there the
ONNX graph itself must carry fp16, so it is converted first with NVIDIA ModelOpt AutoCast
(`modelopt.onnx.autocast.convert_to_mixed_precision`, I/O kept float32) and the network is strongly typed.

TensorRT needs an NVIDIA GPU and the `tensorrt` wheel (the `gpu` extra). Everything here that does not
touch TensorRT (profile checks, names, the error raised where TensorRT or CUDA is missing) runs and is
tested anywhere; the build itself has not been run in this repository's CI (see docs/export.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from export.onnx_export import INPUT_NAMES, ExportError
from training.checkpoint import Checkpoint, add_file

DEFAULT_WORKSPACE_MB = 1024


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the Python package) or a CUDA GPU is not available on this machine."""


@dataclass(frozen=True)
class BatchProfile:
    """One optimization profile over the batch axis: TensorRT tunes kernels for `opt` and accepts any
    batch in [min, max]. The serving engine's rows-per-tick bound must not exceed `max`."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for field_name in ("min", "opt", "max"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name}-batch must be a positive integer, got {value!r}")
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}")

    def shapes(self, data_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """input name -> (min shape, opt shape, max shape), as `IOptimizationProfile.set_shape` takes them."""
        per_row = {"x": tuple(data_shape), "t": (), "y": ()}
        return {name: tuple((b, *per_row[name]) for b in (self.min, self.opt, self.max)) for name in INPUT_NAMES}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_file_name(weights: str, fp16: bool) -> str:
    return f"net-{weights}{'-fp16' if fp16 else ''}.plan"


def default_timing_cache() -> Path:
    """Per-user cache: timings are specific to the GPU model and TensorRT version, not to a checkpoint."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "stepserve" / "tensorrt-timing.cache"


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or TensorRTUnavailable saying what is missing (package or GPU)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}); on a machine with an NVIDIA GPU run "
            "`pip uninstall -y onnxruntime && pip install -e '.[gpu]'`"
        ) from e
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT is installed but no CUDA GPU is visible; building an engine needs one")
    return trt


def _fp16_onnx(trt: ModuleType, onnx_path: Path, out_dir: Path) -> Path | None:
    """None where BuilderFlag.FP16 exists (TensorRT 10.x); else a mixed-precision copy of the graph."""
    if hasattr(trt.BuilderFlag, "FP16"):
        return None
    try:
        import modelopt.onnx.autocast as autocast
    except ImportError as e:
        raise TensorRTUnavailable(
            f"--fp16 with TensorRT {trt.__version__} (strongly typed only) needs NVIDIA ModelOpt to convert "
            f"the graph to fp16 first: `pip install 'nvidia-modelopt[onnx]'` ({e})"
        ) from e
    import onnx

    model = autocast.convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    path = out_dir / (onnx_path.stem + "-fp16.onnx.tmp")
    onnx.save_model(model, path)
    return path


def _parse(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")


def build_engine(
    ckpt: Checkpoint,
    onnx_name: str,
    profile: BatchProfile,
    fp16: bool = False,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
) -> Path:
    """Build `net-<weights>[-fp16].plan` beside the ONNX file and record it (role "tensorrt")."""
    if workspace_mb < 1:
        raise ValueError(f"workspace-mb must be a positive integer, got {workspace_mb}")
    trt = require_tensorrt()
    onnx_path = ckpt.file(onnx_name)  # re-verified against the manifest
    weights = ckpt.manifest["files"][onnx_name].get("weights", "ema")
    timing_cache = timing_cache or default_timing_cache()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)

    fp16_path = _fp16_onnx(trt, onnx_path, ckpt.path) if fp16 else None
    try:
        _parse(trt, network, logger, fp16_path or onnx_path)
    finally:
        if fp16_path is not None:
            fp16_path.unlink(missing_ok=True)
    if fp16 and fp16_path is None:
        config.set_flag(trt.BuilderFlag.FP16)

    opt_profile = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.shapes(ckpt.data_shape).items():
        opt_profile.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt_profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is discarded, not trusted.
    config.set_timing_cache(cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT build_serialized_network failed; its log above says why")
    name = plan_file_name(weights, fp16)
    (ckpt.path / name).write_bytes(bytes(plan))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))

    add_file(
        ckpt.path,
        name,
        "tensorrt",
        weights=weights,
        fp16=fp16,
        profile=profile.to_dict(),
        onnx=onnx_name,
        onnx_sha256=ckpt.manifest["files"][onnx_name]["sha256"],
        tensorrt=trt.__version__,
        device=torch.cuda.get_device_name(),
    )
    return ckpt.path / name
