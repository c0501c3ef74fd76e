"""Import any ONNX net with inputs (x, t, y), described by a small YAML spec, as a servable checkpoint.

The spec (every field named in a refusal; unknown fields refused too):

    objective: ddpm            # ddpm or fm
    schedule: linear           # ddpm: linear or cosine (T = 1000)
    target: eps                # ddpm: eps, v or x0
    path: linear               # fm: linear or vp
    shape: [1, 8, 8]           # one sample's shape, without the batch axis
    num_classes: 0             # 0: unconditional (y is always 0); n: labels 0..n-1, null label n
    normalization: {mean: [0.5], std: [0.5]}   # data = net space * std + mean, per first axis (1 value or shape[0])
    clip: [0, 1]               # optional: data-space range samples are clipped to
    spacing: trailing          # optional, ddpm: the model's default timestep spacing
    name: my-model             # optional: the model's name (default: the output directory's name)

The net must follow the project's time convention: DDPM nets get the integer timestep t in [0, 1000) as
float32, FM nets t in [0, 1] with noise at 0 and data at 1 (`docs/architecture.md`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from export.imports.checkpoint_writer import write_imported
from export.imports.diffusers_scheduler import ImportRefused
from sampling.samplers import SPACINGS
from training.checkpoint import Checkpoint
from training.paths import FM_PATHS, SCHEDULES, TARGETS, DDPMObjective, FMObjective, Objective

FIELDS = {
    "ddpm": ("objective", "schedule", "target", "shape", "num_classes", "normalization"),
    "fm": ("objective", "path", "shape", "num_classes", "normalization"),
}
OPTIONAL = {"ddpm": ("clip", "spacing", "name"), "fm": ("clip", "name")}


class SpecError(ImportRefused):
    """A spec field that is missing or wrong; the message names the field."""

    def __init__(self, source: Path, field: str, message: str) -> None:
        super().__init__(f"{source}: field '{field}': {message}")
        self.field = field


def _choice(src: Path, spec: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value = spec[field]
    if value not in choices:
        raise SpecError(src, field, f"{value!r} is not one of {list(choices)}")
    return value


def _numbers(src: Path, field: str, value: Any, length: int | None = None) -> list[float]:
    ok = isinstance(value, list) and value and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    if not ok or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise SpecError(src, field, f"expected a list of {size}finite numbers, got {value!r}")
    return [float(v) for v in value]


def _normalization(src: Path, value: Any, channels: int) -> dict[str, list[float]]:
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise SpecError(src, "normalization", f"expected {{mean: [...], std: [...]}}, got {value!r}")
    out = {}
    for key in ("mean", "std"):
        nums = _numbers(src, f"normalization.{key}", value[key])
        if len(nums) not in (1, channels):
            raise SpecError(src, f"normalization.{key}", f"needs 1 or {channels} (shape[0]) values, got {len(nums)}")
        out[key] = nums
    if any(s <= 0 for s in out["std"]):
        raise SpecError(src, "normalization.std", f"must be positive, got {out['std']}")
    return out


def read_spec(src: Path) -> tuple[Objective, dict[str, Any], str | None, str | None]:
    """(objective, data, default spacing, name) from the YAML spec at `src`; SpecError names a bad field."""
    try:
        spec = yaml.safe_load(src.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ImportRefused(f"{src}: cannot read the spec ({str(e).splitlines()[0]})") from e
    if not isinstance(spec, dict):
        raise ImportRefused(f"{src}: the spec must be a mapping of fields, got {type(spec).__name__}")
    if "objective" not in spec:
        raise SpecError(src, "objective", "missing (ddpm or fm)")
    kind = _choice(src, spec, "objective", tuple(FIELDS))
    for field in FIELDS[kind]:
        if field not in spec:
            raise SpecError(src, field, "missing")
    unknown = sorted(set(spec) - set(FIELDS[kind]) - set(OPTIONAL[kind]))
    if unknown:
        raise SpecError(src, unknown[0], f"not a field of a {kind} spec (fields: {[*FIELDS[kind], *OPTIONAL[kind]]})")
    if kind == "ddpm":
        objective: Objective = DDPMObjective(
            _choice(src, spec, "schedule", SCHEDULES), _choice(src, spec, "target", TARGETS)
        )
    else:
        objective = FMObjective(_choice(src, spec, "path", FM_PATHS))
    shape = spec["shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise SpecError(src, "shape", f"expected a list of positive integers, got {shape!r}")
    num_classes = spec["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise SpecError(src, "num_classes", f"expected an integer >= 0, got {num_classes!r}")
    data: dict[str, Any] = {
        "kind": "imported",
        "shape": shape,
        "num_classes": num_classes,
        "normalization": _normalization(src, spec["normalization"], shape[0]),
    }
    if "clip" in spec:
        lo, hi = _numbers(src, "clip", spec["clip"], 2)
        if not lo < hi:
            raise SpecError(src, "clip", f"expected [low, high] with low < high, got {spec['clip']}")
        data["clip"] = [lo, hi]
    spacing = _choice(src, spec, "spacing", SPACINGS) if "spacing" in spec else None
    name = spec.get("name")
    if name is not None and not (isinstance(name, str) and name):
        raise SpecError(src, "name", f"expected a non-empty string, got {name!r}")
    return objective, data, spacing, name


def import_onnx(onnx_path: Path, spec_path: Path, out: Path, name: str | None = None) -> Checkpoint:
    """A checkpoint in `out` serving the ONNX file at `onnx_path` as the spec at `spec_path` describes it."""
    objective, data, spacing, spec_name = read_spec(spec_path)
    if not onnx_path.is_file():
        raise ImportRefused(f"{onnx_path}: no such ONNX file")
    return write_imported(
        out,
        onnx_path,
        name=name or spec_name or out.name,
        objective=objective,
        data=data,
        net={"kind": "onnx", "hparams": {"file": onnx_path.name}},
        source={"from": "onnx", "file": str(onnx_path), "spec": str(spec_path)},
        spacing=spacing,
    )
