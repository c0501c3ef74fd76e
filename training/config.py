"""Training configs: YAML files with strictly known keys (an unknown key is refused by name)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DataConfig:
    kind: str = "moons"
    n: int = 20000  # moons and shapes: size of the fixed training draw
    autoencoder: str | None = None  # an autoencoder checkpoint: train on its latents (training/latents.py)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"config data.n must be a whole number >= 1, got {self.n!r}")
        if self.autoencoder is not None and (not isinstance(self.autoencoder, str) or not self.autoencoder):
            raise ValueError("config data.autoencoder must name an autoencoder checkpoint directory")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 5000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 100
    seed: int = 0
    checkpoint_every: int = 1000


# DDPM timestep spacings a checkpoint may name as its default (sampling/samplers/spacing.py's SPACINGS; training
# does not import sampling, and tests/training/test_config.py holds the two equal).
SPACINGS = ("trailing", "leading", "linspace")


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults written to the manifest for requests that leave them out: `spacing`, the DDPM timestep spacing
    (None: the samplers' own, trailing)."""

    spacing: str | None = None

    def __post_init__(self) -> None:
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"config sampling.spacing must be one of {list(SPACINGS)}, got {self.spacing!r}")


@dataclass(frozen=True)
class ReflowConfig:
    """A rectified-flow reflow student (Liu et al. 2022, "Flow Straight and Fast"): `pairs` couplings
    (noise z, teacher's ODE solution from z with `sampler` at K = `steps`) drawn from the FM checkpoint `teacher`
    (a path, relative to the working directory), a fraction `null_fraction` of them with the null label (the
    unconditional flow, so the student keeps classifier-free guidance), and the student trained on the straight
    line between each pair, from the teacher's weights (`init_from_teacher`). `python -m distill` trains it."""

    teacher: str
    pairs: int = 20000
    sampler: str = "fm-rk4"
    steps: int = 32
    null_fraction: float = 0.1
    seed: int = 0
    init_from_teacher: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError("config reflow.teacher must name the teacher's checkpoint directory")
        if not isinstance(self.pairs, int) or self.pairs < 1:
            raise ValueError(f"config reflow.pairs must be a whole number >= 1, got {self.pairs!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"config reflow.steps must be a whole number >= 1, got {self.steps!r}")
        if not isinstance(self.null_fraction, (int, float)) or not 0.0 <= self.null_fraction < 1.0:
            raise ValueError(f"config reflow.null_fraction must be in [0, 1), got {self.null_fraction!r}")


@dataclass(frozen=True)
class Config:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    net: dict[str, Any] = field(default_factory=dict)  # {"kind": ..., hyperparameters...}
    objective: dict[str, Any] = field(default_factory=dict)  # {"kind": "ddpm"|"fm", ...}
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reflow: ReflowConfig | None = None  # a reflow student (python -m distill), else None


def _strict(cls: type, section: str, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) in {section!r}: {', '.join(unknown)}")
    return cls(**d)


def config_from_dict(d: dict[str, Any]) -> Config:
    if not isinstance(d, dict):
        raise ValueError("config must be a mapping")
    unknown = sorted(set(d) - {f.name for f in fields(Config)})
    if unknown:
        raise ValueError(f"unknown config key(s) at top level: {', '.join(unknown)}")
    if "name" not in d:
        raise ValueError("config needs a 'name'")
    for key in ("net", "objective"):
        if not isinstance(d.get(key), dict) or "kind" not in d[key]:
            raise ValueError(f"config section {key!r} needs a 'kind'")
    return Config(
        name=str(d["name"]),
        data=_strict(DataConfig, "data", d.get("data", {})),
        net=dict(d["net"]),
        objective=dict(d["objective"]),
        train=_strict(TrainConfig, "train", d.get("train", {})),
        sampling=_strict(SamplingConfig, "sampling", d.get("sampling", {})),
        reflow=_reflow(d["reflow"]) if d.get("reflow") is not None else None,
    )


def _reflow(d: Any) -> ReflowConfig:
    if isinstance(d, dict) and "teacher" not in d:
        raise ValueError("config section 'reflow' needs a 'teacher' (the FM checkpoint directory)")
    return _strict(ReflowConfig, "reflow", d)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents ({} when empty); FileNotFoundError / ValueError in one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open() as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e


def load_config(path: str | Path) -> Config:
    return config_from_dict(read_yaml(path))
