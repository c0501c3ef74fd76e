"""The training loop: AdamW, EMA, label dropout to the null label, seeded, resumable."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from training.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from training.config import Config
from training.data import Dataset, load_dataset
from training.ema import EMA
from training.latents import latent_dataset
from training.nets import build_net
from training.paths import objective_from_dict


def _optimizer_state(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    """AdamW state as a flat dict of tensors (safetensors holds tensors only, nothing pickled)."""
    out: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                out[f"opt.{i}.{key}"] = torch.as_tensor(st[key]).detach().clone().cpu()
    return out


def _load_optimizer_state(opt: torch.optim.Optimizer, params: list[nn.Parameter], st: dict) -> None:
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in st:
            opt.state[p] = {k: st[f"opt.{i}.{k}"].clone() for k in ("exp_avg", "exp_avg_sq", "step")}


def train(
    cfg: Config,
    out: str | Path,
    *,
    max_steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    init: nn.Module | None = None,
    provenance: dict | None = None,
) -> Path:
    """Train `cfg` and write the checkpoint into `out`. Returns the checkpoint directory.

    `max_steps` caps the run (for quick runs); `seed` overrides the config's seed. With `resume`, the
    checkpoint in `out` (model, EMA, optimizer and RNG state) continues to `cfg.train.steps`. `dataset` replaces
    the config's data (a reflow's couplings, `distill`), `init` is a net whose weights the model starts from, and
    `provenance` goes into the manifest's `training` section.
    """
    if cfg.reflow is not None and dataset is None:
        raise ValueError(
            f"config {cfg.name!r} is a reflow student (section 'reflow'): train it with "
            f"python -m distill --config <its yaml>"
        )
    tc = cfg.train if seed is None else replace(cfg.train, seed=seed)
    total = tc.steps if max_steps is None else min(tc.steps, max_steps)
    objective = objective_from_dict(cfg.objective)
    if dataset is not None:
        data = dataset
    else:
        data = load_dataset(cfg.data.kind, n=cfg.data.n, seed=tc.seed)
        if cfg.data.autoencoder is not None:
            data = latent_dataset(data, cfg.data.autoencoder, n=cfg.data.n, seed=tc.seed, progress=progress)
    if data.noise is not None and objective.kind != "fm":
        raise ValueError(f"config {cfg.name!r}: coupled noise (reflow) needs an objective of kind 'fm'")
    hparams = {k: v for k, v in cfg.net.items() if k != "kind"}

    torch.manual_seed(tc.seed)  # weight init
    model = build_net(cfg.net["kind"], hparams, data.shape, data.num_classes, objective.t_scale)
    if init is not None:
        model.load_state_dict(init.state_dict(), strict=True)
    ema = EMA(model, tc.ema_decay)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    start, elapsed = 0, 0.0

    if resume:
        ckpt = load_checkpoint(out)
        if ckpt.name != cfg.name:
            raise ValueError(f"--resume: checkpoint in {out} is {ckpt.name!r}, config is {cfg.name!r}")
        model.load_state_dict(ckpt.net("raw").state_dict())
        ema.model.load_state_dict(ckpt.net("ema").state_dict())
        st = load_train_state(ckpt)
        _load_optimizer_state(opt, params, st)
        gen.set_state(st["rng"])
        start = int(ckpt.manifest["training"]["steps"])
        elapsed = float(ckpt.manifest["training"].get("wall_time_s", 0.0))

    def lr_at(step: int) -> float:
        return tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))

    def save(step: int) -> Path:
        state = _optimizer_state(opt, params)
        state["rng"] = gen.get_state()
        return save_checkpoint(
            out,
            name=cfg.name,
            net_kind=cfg.net["kind"],
            net_hparams=hparams,
            t_scale=objective.t_scale,
            model=model,
            ema_model=ema.model,
            objective=objective,
            data={
                "kind": data.kind,
                "shape": data.shape,
                "normalization": data.normalization.to_dict(),
                "num_classes": data.num_classes,
                **({"n": cfg.data.n} if data.kind in ("moons", "shapes") else {}),
            },
            latent=data.latent,
            training={
                **asdict(tc),
                "steps": step,
                "planned_steps": tc.steps,
                "wall_time_s": round(elapsed, 2),
                **(provenance or {}),
            },
            train_state=state,
            sampling={k: v for k, v in asdict(cfg.sampling).items() if v is not None},
        )

    model.train()
    n = data.x.shape[0]
    null = data.num_classes
    bar = tqdm(range(start, total), desc=cfg.name, disable=not progress, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        idx = torch.randint(0, n, (tc.batch_size,), generator=gen)
        x1, y = data.x[idx], data.y[idx].clone()
        if data.noise is None:
            drop = torch.rand(tc.batch_size, generator=gen) < tc.label_dropout
            y[drop] = null  # label dropout: the net also learns the unconditional model, for CFG
            loss = objective.loss(model, x1, y, generator=gen)
        else:  # coupled pairs: each x1 belongs to its noise and its label (null rows are the teacher's own)
            loss = objective.loss(model, x1, y, generator=gen, x0=data.noise[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        ema.update(model)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if tc.checkpoint_every > 0 and done % tc.checkpoint_every == 0 and done < total:
            elapsed_now = elapsed + time.perf_counter() - t0
            elapsed, t0 = elapsed_now, time.perf_counter()
            save(done)
    elapsed += time.perf_counter() - t0
    return save(max(total, start))
