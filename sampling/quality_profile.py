"""A model's quality profile: predicted sample quality against the step budget K, per fixed-step sampler.

Stored in the checkpoint as `quality_profile.json` (role "quality" in the manifest, with its sha256) and tied
to the weights it was measured on by their sha256: retrained weights make the profile stale, and
`load_quality_profile` refuses a stale or tampered profile with a CheckpointError. `quality` is in [0, 1],
higher is better; the profile's `definition` says how it was computed (see `sampling/measure_quality.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.checkpoint import WEIGHT_FILES, CheckpointError, add_file, read_manifest, verify_file

QUALITY_FILE = "quality_profile.json"
QUALITY_ROLE = "quality"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class QualityPoint:
    """One measured point: `sampler` at K = `steps` (`nfe` net evaluations per sample, unguided); `value` the
    metric as measured, `quality` its map into [0, 1] (higher is better)."""

    sampler: str
    steps: int
    nfe: int
    value: float
    quality: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "nfe": self.nfe,
            "value": self.value,
            "quality": self.quality,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityPoint:
        point = cls(str(d["sampler"]), int(d["steps"]), int(d["nfe"]), float(d["value"]), float(d["quality"]))
        if point.steps < 1 or point.nfe < 1 or not (math.isfinite(point.quality) and 0.0 <= point.quality <= 1.0):
            raise ValueError(f"invalid quality point {d}")
        return point


@dataclass(frozen=True)
class QualityProfile:
    """The metric's name, the written definition of `quality`, the sha256 of the weights it was measured on,
    and its points (any order; `for_sampler` sorts)."""

    metric: str
    definition: str
    weights_sha256: str
    points: tuple[QualityPoint, ...]

    def samplers(self) -> list[str]:
        """Samplers with at least one point, in the order they first appear."""
        return list(dict.fromkeys(p.sampler for p in self.points))

    def for_sampler(self, name: str) -> list[QualityPoint]:
        """The sampler's points sorted by steps (empty when the profile has none for it)."""
        return sorted((p for p in self.points if p.sampler == name), key=lambda p: p.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "metric": self.metric,
            "definition": self.definition,
            "weights_sha256": self.weights_sha256,
            "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityProfile:
        if d.get("version", PROFILE_VERSION) != PROFILE_VERSION:
            raise ValueError(f"unknown quality profile version {d.get('version')!r}")
        return cls(
            metric=str(d["metric"]),
            definition=str(d["definition"]),
            weights_sha256=str(d["weights_sha256"]),
            points=tuple(QualityPoint.from_json(p) for p in d["points"]),
        )


def weights_sha256(ckpt_dir: str | Path, weights: str = "ema") -> str:
    """The manifest's sha256 of the `weights` file ("ema" or "raw"), verified against the file."""
    d = Path(ckpt_dir)
    name = WEIGHT_FILES[weights]
    info = read_manifest(d)["files"].get(name)
    if info is None:
        raise CheckpointError(f"checkpoint {d}: no {name} in the manifest")
    verify_file(d, name, info["sha256"])
    return info["sha256"]


def write_quality_profile(ckpt_dir: str | Path, profile: QualityProfile) -> Path:
    """Write `quality_profile.json` into the checkpoint and record it in the manifest with its sha256."""
    d = Path(ckpt_dir)
    path = d / QUALITY_FILE
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    add_file(d, QUALITY_FILE, QUALITY_ROLE, weights_sha256=profile.weights_sha256, metric=profile.metric)
    return path


def load_quality_profile(ckpt_dir: str | Path) -> QualityProfile | None:
    """The checkpoint's profile, or None when its manifest lists none. CheckpointError when the file does not
    match its recorded sha256 (tampered), does not parse, or was measured on other weights than the
    checkpoint's (stale: the weights were retrained or replaced since)."""
    d = Path(ckpt_dir)
    info = read_manifest(d)["files"].get(QUALITY_FILE)
    if info is None:
        return None
    path = verify_file(d, QUALITY_FILE, info["sha256"])
    try:
        profile = QualityProfile.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {d}: {QUALITY_FILE} is not a valid quality profile ({e})") from e
    # Profiles are measured on the weights serving uses by default: the EMA weights.
    current = weights_sha256(d, "ema")
    if profile.weights_sha256 != current:
        raise CheckpointError(
            f"checkpoint {d}: {QUALITY_FILE} was measured on weights {profile.weights_sha256[:12]}..., but "
            f"{WEIGHT_FILES['ema']} is {current[:12]}...; the profile is stale: recompute it with "
            f"`python -m serving profile --checkpoint {d}`"
        )
    return profile
