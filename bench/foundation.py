"""Foundation benchmarks: sample quality against K, sampler overhead, training speed.

    python -m bench --only quality [--quick]

Writes `quality.json` (and `quality_vs_k.png`) into --out. Run on the trained checkpoints in models/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, machine
from sampling import samplers
from sampling.driver import sample
from sampling.request import SampleSpec, to_data_space
from training.checkpoint import Checkpoint, load_checkpoint
from training.config import load_config
from training.metrics import digits_quality, sw_ratio
from training.trainer import train

MOONS_GRID = {
    "fm-euler": [1, 2, 5, 10, 20, 50, 100],
    "fm-rk4": [1, 2, 5, 10, 20, 50, 100],
    "ddim": [2, 5, 10, 20, 50, 100],
    "ddpm": [10, 20, 50, 100, 200, 500, 1000],
}
QUICK_GRID = {"fm-euler": [5, 20], "fm-rk4": [5, 20], "ddim": [10, 50], "ddpm": [50, 200]}
# The low-K samplers (dpm-solver++, heun, fm-heun, fm-dopri5) are measured by `python -m bench.knobs`.


def moons_quality(models: Path, quick: bool, n: int = 2000) -> list[dict]:
    rows = []
    grid = QUICK_GRID if quick else MOONS_GRID
    for model in ("moons-fm", "moons-ddpm"):
        ckpt = load_checkpoint(models / model)
        net = ckpt.net("ema")
        for name in samplers.samplers_for(ckpt.objective):
            for k in grid.get(name, []):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    x = to_data_space(ckpt, sample(ckpt, net, SampleSpec(name, k, n, seed=1)))
                nfe = samplers.SAMPLERS[name].nfe(k)
                rows.append(
                    {
                        "model": model,
                        "sampler": name,
                        "steps": k,
                        "nfe": nfe,
                        "sw_ratio": round(sw_ratio(x), 3),
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
                print(f"  {model:11s} {name:9s} K={k:<5d} sw_ratio={rows[-1]['sw_ratio']:.3f}")
    return rows


def _class_conditional(ckpt: Checkpoint, net, name: str, k: int, w: float | None, per_class: int):
    images, labels = [], []
    for c in range(ckpt.num_classes):
        spec = SampleSpec(name, k, per_class, guidance=w, class_label=c, seed=100 + c)
        with torch.inference_mode():
            images.append(to_data_space(ckpt, sample(ckpt, net, spec)))
        labels.append(np.full(per_class, c))
    return np.concatenate(images), np.concatenate(labels)


def digits_quality_rows(models: Path, quick: bool) -> list[dict]:
    per_class = 20 if quick else 50
    rows = []
    for model, name, k_fixed, ks in (
        ("digits-fm", "fm-euler", 20, [5, 10, 20, 50]),
        ("digits-ddpm", "ddim", 20, [5, 10, 20, 50]),
    ):
        ckpt = load_checkpoint(models / model)
        net = ckpt.net("ema")
        for w in (1.0, 2.0, 4.0):
            x, y = _class_conditional(ckpt, net, name, k_fixed, w, per_class)
            q = digits_quality(x, y)
            rows.append({"model": model, "sampler": name, "steps": k_fixed, "guidance": w, **_round(q)})
            print(f"  {model:11s} {name} K={k_fixed} w={w:g} accuracy={q['accuracy']:.3f} fd={q['frechet']:.2f}")
        for k in [5, 20] if quick else ks:
            x, y = _class_conditional(ckpt, net, name, k, 1.0, per_class)
            q = digits_quality(x, y)
            rows.append({"model": model, "sampler": name, "steps": k, "guidance": 1.0, **_round(q)})
            print(f"  {model:11s} {name} K={k} w=1 accuracy={q['accuracy']:.3f} fd={q['frechet']:.2f}")
    return rows


def _round(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def sampler_overhead(models: Path, quick: bool, batch: int = 256, repeats: int = 7) -> list[dict]:
    """Full sampling time / (NFE x one bare forward), measured interleaved (bare, run, bare, run, ...)."""
    rows = []
    for model, name, k in (("moons-fm", "fm-euler", 50), ("moons-fm", "fm-rk4", 10), ("digits-fm", "fm-euler", 20)):
        ckpt = load_checkpoint(models / model)
        net = ckpt.net("ema")
        x = torch.randn(batch, *ckpt.data_shape)
        t, y = torch.full((batch,), 0.5), torch.zeros(batch, dtype=torch.long)
        nfe = samplers.SAMPLERS[name].nfe(k)
        bare, full = [], []
        with torch.inference_mode():
            for _ in range(3):
                net(x, t, y)
            for _ in range(3 if quick else repeats):
                t0 = time.perf_counter()
                for _ in range(nfe):
                    net(x, t, y)
                bare.append((time.perf_counter() - t0) / nfe)
                t0 = time.perf_counter()
                sample(ckpt, net, SampleSpec(name, k, batch, class_label=0, seed=0))
                full.append(time.perf_counter() - t0)
        ratio = statistics.median(full) / (nfe * statistics.median(bare))
        rows.append(
            {
                "model": model,
                "sampler": name,
                "steps": k,
                "batch": batch,
                "nfe": nfe,
                "bare_forward_ms": round(1e3 * statistics.median(bare), 3),
                "sampling_ms": round(1e3 * statistics.median(full), 2),
                "overhead_ratio": round(ratio, 3),
            }
        )
        print(f"  overhead {model} {name} K={k}: {ratio:.3f}")
    return rows


def training_speed(models: Path, quick: bool, steps: int = 60) -> list[dict]:
    """Steps/s of each default config over a short run of the real trainer (its recorded loop time, first
    steps included), and the full run's estimated time."""
    rows = []
    n = 20 if quick else steps
    for name in ("moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        with tempfile.TemporaryDirectory() as scratch:
            short = load_checkpoint(train(cfg, Path(scratch) / name, max_steps=n, progress=False))
            rate = n / short.manifest["training"]["wall_time_s"]
        manifest_time = None
        if (models / name / "manifest.json").is_file():
            manifest_time = load_checkpoint(models / name).manifest["training"].get("wall_time_s")
        rows.append(
            {
                "config": name,
                "steps": cfg.train.steps,
                "steps_per_s": round(rate, 1),
                "estimated_minutes": round(cfg.train.steps / rate / 60, 2),
                "recorded_wall_minutes": None if manifest_time is None else round(manifest_time / 60, 2),
            }
        )
        print(f"  train {name}: {rate:.1f} steps/s, ~{rows[-1]['estimated_minutes']} min for {cfg.train.steps} steps")
    return rows


def plot_quality(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, name in sorted({(r["model"], r["sampler"]) for r in rows}):
        pts = [(r["steps"], r["sw_ratio"]) for r in rows if r["model"] == model and r["sampler"] == name]
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{model} {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("steps K")
    ax.set_ylabel("sliced-Wasserstein ratio (1 = data)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(out_dir: Path, quick: bool = False, models: Path = ROOT / "models") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("moons quality against K")
    result = {"machine": machine(), "moons_quality": moons_quality(models, quick)}
    print("digits quality")
    result["digits_quality"] = digits_quality_rows(models, quick)
    print("sampler overhead")
    result["sampler_overhead"] = sampler_overhead(models, quick)
    print("training speed")
    result["training_speed"] = training_speed(models, quick)
    plot_quality(result["moons_quality"], out_dir / "quality_vs_k.png")
    (out_dir / "quality.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench-results", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer K values and samples")
    p.add_argument("--models", default=str(ROOT / "models"), help="directory of the default checkpoints")
    a = p.parse_args()
    run(Path(a.out), a.quick, Path(a.models))


if __name__ == "__main__":
    main()
