"""Latent against pixel space: the teaching text's "train VAE -> diffuse in latent space; 10x faster training at
same quality", measured on this machine.

    python -m bench.latent_vs_pixel [--budget-s 600] [--evals 4] [--per-class 50] [--out DIR]
    python -m bench --only latent_vs_pixel           (the same defaults; --quick: 60 s, 2 scores, 20 a kind)

Two DiTs of one recipe (configs/shapes-latent-fm.yaml: hidden 96, depth 4, 4 heads, flow matching, batch 128,
lr 1e-3, EMA 0.999, label dropout 0.1) on the same shapes images: one in models/shapes-vae's latent space
(8x8x4, patch 2: 16 tokens), one on the pixels (32x32x3, patch 4: 64 tokens; about the same parameters). Each
trains for `--budget-s` seconds of training time (the manifest's wall_time_s: evaluation not counted), stopping
`--evals` times on the way to score its EMA weights: fm-rk4, K = 10, guidance w = 2, `--per-class` samples of
each of the 5 kinds, by the held-out shapes classifier (accuracy, and the Frechet distance in its features to
fresh images; data against data reads `floor`). The latent model's samples are decoded by its decoder; the
autoencoder's own training time is reported beside (it is paid once, for every latent model after it).
Then sampling time per image, side by side: 64 images (fm-rk4, K = 10, w = 2) from each final model, medians of
interleaved rounds, the latent one including its decode.

Writes latent_vs_pixel.json and latent_vs_pixel.png (quality against training time) into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, machine, median_times
from bench.knobs import CountingNet, class_scores, draw
from sampling.request import SampleSpec
from training.autoencoder import load_autoencoder
from training.checkpoint import load_checkpoint
from training.config import Config, load_config
from training.trainer import train

LATENT_CONFIG = ROOT / "configs" / "shapes-latent-fm.yaml"
PIXEL_PATCH = 4  # 32x32 pixels in 4x4 patches: 64 tokens (the latent model: 8x8 in 2x2, 16 tokens)
SAMPLER, K, W = "fm-rk4", 10, 2.0


def pixel_config(latent: Config) -> Config:
    """The latent recipe on the pixels: no autoencoder, patch 4."""
    return replace(
        latent,
        name=latent.name.replace("latent", "pixel"),
        data=replace(latent.data, autoencoder=None),
        net={**latent.net, "patch": PIXEL_PATCH},
    )


def _progress(ckpt_dir: Path) -> tuple[int, float]:
    """(steps trained, training seconds) of a checkpoint; the seconds at least the manifest's resolution
    (0.01 s), so a run faster than that still gives a speed."""
    training = load_checkpoint(ckpt_dir).manifest["training"]
    return int(training["steps"]), max(float(training["wall_time_s"]), 0.01)


def train_and_score(cfg: Config, out: Path, budget_s: float, evals: int, per_class: int) -> dict[str, Any]:
    """Train `cfg` in pieces to `budget_s` of training time, scoring the EMA weights after each piece."""
    probe = 30
    train(
        replace(cfg, train=replace(cfg.train, steps=max(probe, cfg.train.steps))), out, max_steps=probe, progress=False
    )
    done, wall = _progress(out)
    points = []
    for i in range(1, evals + 1):
        # Each piece ends at its share of the budget, by the speed seen so far (at least one step more).
        steps = done + max(1, round((budget_s * i / evals - wall) / (wall / done)))
        bigger = replace(cfg, train=replace(cfg.train, steps=max(steps, cfg.train.steps)))
        train(bigger, out, max_steps=steps, resume=True, progress=False)
        ckpt = load_checkpoint(out)
        scores = class_scores(ckpt, CountingNet(ckpt.net("ema")), SAMPLER, K, W, per_class)
        done, wall = _progress(out)
        points.append({"steps": steps, "train_s": round(wall, 1), **scores})
        print(f"{cfg.name}: {steps} steps, {wall:.0f} s: {scores}", flush=True)
    s_per_step = wall / done
    params = sum(p.numel() for p in ckpt.net("ema").parameters())
    return {"config": cfg.name, "params": params, "s_per_step": round(s_per_step, 4), "points": points}


def sampling_time(ckpt_dirs: dict[str, Path], n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per image for n images from each checkpoint, medians of interleaved rounds (decode included)."""
    models = {name: load_checkpoint(d) for name, d in ckpt_dirs.items()}
    nets = {name: CountingNet(ckpt.net("ema")) for name, ckpt in models.items()}
    spec = SampleSpec(SAMPLER, K, n, guidance=W, class_label=0, seed=1)
    med = median_times({name: (lambda name=name: draw(models[name], nets[name], spec)) for name in models}, rounds)
    return {name: {"median_s": t, "s_per_image": t / n} for name, t in med.items()}


def first_reaching(points: list[dict], accuracy: float, frechet: float) -> float | None:
    """Training seconds of the first point at or past both scores, or None."""
    return next((p["train_s"] for p in points if p["accuracy"] >= accuracy and p["frechet"] <= frechet), None)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, f) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, run in result["runs"].items():
        t = [p["train_s"] for p in run["points"]]
        a.plot(t, [p["accuracy"] for p in run["points"]], "o-", label=f"{name} ({run['params'] / 1e3:.0f}k params)")
        f.plot(t, [p["frechet"] for p in run["points"]], "o-", label=name)
    a.set(xlabel="training time (s)", ylabel="classifier accuracy", title=f"{SAMPLER} K={K} w={W}")
    f.set(xlabel="training time (s)", ylabel="Frechet distance (lower is better)", yscale="log")
    a.legend()
    f.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure(
    budget_s: float,
    evals: int,
    per_class: int,
    out: Path,
    sample_n: int = 64,
    rounds: int = 3,
    latent: Config | None = None,
) -> dict:
    """The measure for `latent` (default configs/shapes-latent-fm.yaml, its autoencoder relative to the project
    root unless absolute) and its pixel twin."""
    latent = latent or load_config(LATENT_CONFIG)
    vae = ROOT / latent.data.autoencoder  # (an absolute path stays itself)
    if not (vae / "manifest.json").is_file():
        raise SystemExit(f"error: {vae} is not trained; `make train` trains it (configs/shapes-vae.yaml)")
    with tempfile.TemporaryDirectory(prefix="latent-vs-pixel-") as tmp:
        dirs = {"latent": Path(tmp) / "latent", "pixel": Path(tmp) / "pixel"}
        runs = {
            "latent": train_and_score(
                replace(latent, data=replace(latent.data, autoencoder=str(vae))),
                dirs["latent"],
                budget_s,
                evals,
                per_class,
            ),
            "pixel": train_and_score(pixel_config(latent), dirs["pixel"], budget_s, evals, per_class),
        }
        sampling = sampling_time(dirs, sample_n, rounds)
    best_pixel = runs["pixel"]["points"][-1]
    result = {
        "machine": machine(),
        "budget_s": budget_s,
        "sampler": {"name": SAMPLER, "steps": K, "guidance": W, "per_class": per_class},
        "autoencoder_train_s": load_autoencoder(vae).manifest["training"].get("seconds"),
        "runs": runs,
        # Training time the latent model took to reach the pixel model's final scores (both at once), if it did.
        "latent_s_to_pixel_final": first_reaching(
            runs["latent"]["points"], best_pixel["accuracy"], best_pixel["frechet"]
        ),
        "sampling": sampling,
        "sampling_ratio_pixel_over_latent": sampling["pixel"]["s_per_image"] / sampling["latent"]["s_per_image"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "latent_vs_pixel.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "latent_vs_pixel.png")
    return result


def run(out: Path, quick: bool = False) -> dict:
    """`make bench`'s section: 600 s of training each, scored 4 times (quick: 60 s, twice, 20 a kind)."""
    return measure(60.0, 2, 20, out) if quick else measure(600.0, 4, 50, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latent_vs_pixel", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=600.0, help="training time for each model, seconds")
    p.add_argument("--evals", type=int, default=4, help="how many times each model is scored on the way")
    p.add_argument("--per-class", type=int, default=50, help="samples of each kind per score")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="where the JSON and the plot go")
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.evals < 1 or args.per_class < 2:
        p.error("--budget-s must be > 0, --evals >= 1, --per-class >= 2")
    torch.manual_seed(0)
    r = measure(args.budget_s, args.evals, args.per_class, args.out)
    for name, res in r["runs"].items():
        last = res["points"][-1]
        print(f"{name}: {res['params']} params, {res['s_per_step'] * 1e3:.0f} ms/step, final {last}")
    print(f"latent reached the pixel model's final scores after {r['latent_s_to_pixel_final']} s of training")
    print(
        f"sampling, s per image: { ({k: round(v['s_per_image'], 4) for k, v in r['sampling'].items()}) }; "
        f"pixel / latent {r['sampling_ratio_pixel_over_latent']:.2f}"
    )
    print(f"wrote {args.out / 'latent_vs_pixel.json'} and latent_vs_pixel.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
