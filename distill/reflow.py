"""Rectified-flow reflow (Liu, Gong and Liu 2022, "Flow Straight and Fast", 2-rectified flow).

A teacher's ODE maps noise z to a sample x = ODE_teacher(z, y). Pairs (z, x) drawn that way are a coupling whose
straight lines x_t = t x + (1 - t) z cross less than those of independent (z, data) pairs, so a student trained
with the ordinary linear-path FM loss on them has straighter trajectories and samples well in fewer steps
(K = 1 Euler is exact on a perfectly straight flow). Labels: classes uniform, a `null_fraction` of the pairs with
the null label and the teacher's unconditional flow, so the student learns both halves of classifier-free
guidance from the teacher itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from sampling import samplers
from sampling.driver import run_sampler
from sampling.samplers import Forward
from training.checkpoint import WEIGHT_FILES, Checkpoint, load_checkpoint
from training.config import Config, ReflowConfig
from training.data import Dataset
from training.paths.objectives import FMObjective
from training.trainer import train

COUPLING_BATCH = 4096  # rows per teacher solve (memory bound on digits-sized nets, not a speed knob)


def check_teacher(cfg: Config, teacher: Checkpoint) -> None:
    """Refuse, naming the field, a config the teacher cannot distill into."""
    rf = cfg.reflow
    assert rf is not None
    if teacher.objective.kind != "fm":
        raise ValueError(
            f"reflow.teacher {rf.teacher}: a flow-matching checkpoint is needed, it is '{teacher.objective.kind}'"
        )
    if cfg.objective.get("kind") != "fm" or cfg.objective.get("path", "linear") != "linear":
        raise ValueError("objective: a reflow student trains on straight lines, so it needs {kind: fm, path: linear}")
    usable = samplers.samplers_for(teacher.objective)
    if rf.sampler not in usable:
        raise ValueError(f"reflow.sampler: {rf.sampler!r} does not sample the teacher; one of {usable}")
    if cfg.data.kind != teacher.data_kind:
        raise ValueError(f"data.kind: {cfg.data.kind!r}, but the teacher {rf.teacher} models {teacher.data_kind!r}")
    if rf.init_from_teacher:
        net = teacher.manifest["net"]
        mine = {k: v for k, v in cfg.net.items() if k != "kind"}
        if cfg.net.get("kind") != net["kind"] or mine != net["hparams"]:
            raise ValueError(
                f"net: {cfg.net} differs from the teacher's ({net['kind']}, {net['hparams']}); with "
                "reflow.init_from_teacher the student's net must be the teacher's"
            )


@torch.no_grad()
def draw_couplings(
    forward: Forward,
    objective: FMObjective,
    shape: tuple[int, ...],
    num_classes: int,
    pairs: int,
    *,
    sampler: str = "fm-rk4",
    steps: int = 32,
    null_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(z, x, y): `pairs` noises z (pairs, *shape), the teacher's ODE solutions x from them with `sampler` at
    K = `steps`, and labels y (uniform over the classes, `null_fraction` of them the null label `num_classes`).
    Deterministic in `seed`."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((pairs, *shape), generator=gen)
    y = torch.randint(0, num_classes, (pairs,), generator=gen)
    y[torch.rand(pairs, generator=gen) < null_fraction] = num_classes
    x = torch.empty_like(z)
    chunks = range(math.ceil(pairs / COUPLING_BATCH))
    for i in tqdm(chunks, desc=f"couplings ({sampler} K={steps})", disable=not progress, unit="batch"):
        rows = slice(i * COUPLING_BATCH, (i + 1) * COUPLING_BATCH)
        it = samplers.start(sampler, objective, z[rows], steps, gen)
        x[rows] = run_sampler(it, forward, y[rows], None, num_classes)
    return z, x, y


def couplings(teacher: Checkpoint, rf: ReflowConfig, progress: bool = True) -> Dataset:
    """The couplings `rf` asks of `teacher`, in its normalized space, as a Dataset whose `noise` is set."""
    z, x, y = draw_couplings(
        teacher.net("ema"),
        teacher.objective,
        teacher.data_shape,
        teacher.num_classes,
        rf.pairs,
        sampler=rf.sampler,
        steps=rf.steps,
        null_fraction=rf.null_fraction,
        seed=rf.seed,
        progress=progress,
    )
    return Dataset(teacher.data_kind, x, y, teacher.data_shape, teacher.num_classes, teacher.normalization, noise=z)


def distill(cfg: Config, out: str | Path, *, max_steps: int | None = None, progress: bool = True) -> Path:
    """Draw the couplings of `cfg.reflow` from its teacher and train the student into `out`."""
    rf = cfg.reflow
    if rf is None:
        raise ValueError(f"config {cfg.name!r} has no 'reflow' section: train it with python -m training")
    teacher = load_checkpoint(rf.teacher)
    check_teacher(cfg, teacher)
    data = couplings(teacher, rf, progress)
    provenance = {
        "reflow": {
            "teacher": teacher.name,
            "teacher_weights_sha256": teacher.manifest["files"][WEIGHT_FILES["ema"]]["sha256"],
            "pairs": rf.pairs,
            "sampler": rf.sampler,
            "steps": rf.steps,
            "null_fraction": rf.null_fraction,
            "seed": rf.seed,
            "init_from_teacher": rf.init_from_teacher,
        }
    }
    init = teacher.net("ema") if rf.init_from_teacher else None
    return train(cfg, out, max_steps=max_steps, progress=progress, dataset=data, init=init, provenance=provenance)
