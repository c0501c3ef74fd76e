"""Shared fixtures: tiny checkpoints of the four default configs, trained for a few steps, and a tiny latent
model (a VAE of a few steps and a DiT in its latent space)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm")
# Variants for the knobs report (bench.knobs): schedule, target, path and net against the defaults.
KNOB_MODELS = (
    "moons-ddpm-linear",
    "moons-ddpm-cosine",
    "moons-ddpm-v",
    "moons-ddpm-x0",
    "moons-fm-vp",
    "digits-fm-mlp",
)
# Few-step students distilled from a default model (python -m distill; config section `reflow`).
DISTILLED_MODELS = ("moons-fm-reflow", "digits-fm-reflow")
# DiTs in the latent space of models/shapes-vae (configs/shapes-latent-*.yaml); each checkpoint holds its decoder.
LATENT_MODELS = ("shapes-latent-fm", "shapes-latent-ddpm")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> checkpoint dir for each default config, trained 20 steps (weights are random-ish, but every
    file, hash and shape is real)."""
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for name in DEFAULT_MODELS:
        out[name] = train(load_config(ROOT / "configs" / f"{name}.yaml"), root / name, max_steps=20, progress=False)
    return out


TINY_VAE = {
    "name": "tiny-vae",
    "data": {"kind": "shapes", "n": 40, "seed": 0},
    "vae": {"latent_channels": 4, "base_channels": 8, "downsample": 2},
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
}


def tiny_latent_config(vae_dir: Path, kind: str = "fm") -> dict:
    objective = {"kind": "fm", "path": "linear"} if kind == "fm" else {"kind": "ddpm", "schedule": "cosine"}
    return {
        "name": f"tiny-latent-{kind}",
        "data": {"kind": "shapes", "n": 30, "autoencoder": str(vae_dir)},
        "net": {"kind": "dit", "patch": 2, "hidden": 16, "depth": 1, "heads": 2},
        "objective": objective,
        "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1},
    }


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.autoencoder import train_vae, vae_config_from_dict

    return train_vae(vae_config_from_dict(TINY_VAE), tmp_path_factory.mktemp("ae") / "tiny-vae", progress=False)


@pytest.fixture(scope="session")
def tiny_latent(tiny_vae: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent FM model of tiny_vae, trained 2 steps (its latents cached in a directory of its own)."""
    from training.config import config_from_dict

    root = tmp_path_factory.mktemp("latent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEPSERVE_CACHE", str(root / "cache"))
        return train(config_from_dict(tiny_latent_config(tiny_vae)), root / "tiny-latent-fm", progress=False)


@pytest.fixture(scope="session")
def small_shapes_classifier():
    """A shapes classifier trained briefly (a few seconds; the metric's own, training.shapes.shapes_classifier,
    takes about 35 s here): for tests of code that scores shapes, where the scores only need to tell right
    kinds from wrong ones. Patch it in with
    monkeypatch.setattr("training.shapes.shapes_classifier", lambda seed=0: small_shapes_classifier)."""
    from training.shapes import ShapesClassifier

    return ShapesClassifier(n=3000, epochs=4, seed=0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules whose tests use the session's shared Ray (`serve_cluster`, tests/serving/conftest.py) run last,
    together, in their usual order: that Ray comes up once they start and stays up to the end of the session,
    so every test that starts a Ray of its own or only computes runs before it, without its processes taking
    CPU beside them. Whole modules move, so module-scoped fixtures are set up once."""
    shared = {item.module.__name__ for item in items if "serve_cluster" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.module.__name__ in shared)  # stable: the order within each part is kept
