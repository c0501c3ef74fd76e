"""The knobs report: sample quality against net evaluations for every sampler, objective, target, schedule and
path the committed moons models cover, MLP against DiT on digits, the distilled students, the latent models
against K, and classifier-free guidance's w.

    python -m bench.knobs [--models models] [--out docs] [--quick]     (make knobs)

Writes docs/knobs.md, docs/img/knobs-*.png and docs/knobs.json. Quality on moons is the SW ratio of
training.metrics (1.0 = as close to the data as another draw of the data); on digits the classifier accuracy of
the requested class and the Frechet distance in the classifier's feature space (training.metrics). NFE is
counted at the net, per sample, unguided unless stated (a guided evaluation runs 2 rows).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sampling import samplers  # noqa: E402
from sampling.driver import sample  # noqa: E402
from sampling.request import SampleSpec, to_data_space  # noqa: E402
from training.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from training.metrics import digits_quality, sw_ratio  # noqa: E402
from training.shapes import shapes_quality  # noqa: E402

# Moons models and what each varies against moons-ddpm (DDPM: cosine schedule, v, leading spacing: the default,
# chosen by default_choice below) or moons-fm (linear path). moons-ddpm-linear is the earlier default.
MOONS = {
    "moons-ddpm": "DDPM, cosine beta, v",
    "moons-ddpm-linear": "DDPM, linear beta, eps",
    "moons-ddpm-cosine": "DDPM, cosine beta, eps",
    "moons-ddpm-v": "DDPM, linear beta, v",
    "moons-ddpm-x0": "DDPM, linear beta, x0",
    "moons-fm": "FM, linear path",
    "moons-fm-vp": "FM, VP path",
}
GRID = {
    "ddpm": [10, 20, 50, 100, 200, 500, 1000],
    "ddim": [2, 5, 10, 20, 50, 100, 200, 500],
    "dpm-solver++": [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 50, 100],
    "unipc": [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 50, 100],
    "heun": [2, 3, 4, 5, 6, 8, 10, 15, 25, 50],
    "fm-euler": [1, 2, 3, 5, 10, 20, 50, 100],
    "fm-heun": [1, 2, 3, 4, 5, 8, 10, 20],
    "fm-rk4": [1, 2, 3, 5, 10, 20],
    "fm-unipc": [2, 3, 4, 5, 6, 8, 10, 15, 20],
}
QUICK = {name: ks[::3] for name, ks in GRID.items()}
DOPRI5_TOLS = [3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4]
# Cosine's alpha_bar at t = 999 is 2.4e-9 (beta clipped at 0.999), so an eps net's x0 = (x - sigma eps) / alpha
# multiplies its error by 1 / alpha = 2e4 at the first step of any grid that starts at t = 999 (trailing,
# linspace): every sampler then fails (SW ratio in the thousands). Leading starts at T // K (K + 1 for
# dpm-solver++) steps below it; the frontier uses it for this model and keeps one trailing point to show why.
SPACING = {"moons-ddpm-cosine": "leading"}
# The default-configuration table: every DDPM moons model at 10 NFE with each deterministic solver and spacing,
# beside its ancestral sampler at K = 1000, each over this many seeds (one seed's SW ratio wobbles by ~25 %).
CHOICE_SEEDS, CHOICE_SOLVERS, CHOICE_SPACINGS = 8, ("dpm-solver++", "unipc"), ("trailing", "leading", "linspace")
THRESHOLDS = (1.3, 2.0)
# The teaching text's rule-of-thumb K ("visibly good", "recognizable but rough") on 32-256 px images;
# RK4 spends 4 evaluations a step.
LESSON_K = {"ddpm": (250, 50), "ddim": (20, 10), "fm-euler": (20, 7), "fm-rk4": (10, 4)}
LESSON_EVALS = {"ddpm": 1, "ddim": 1, "fm-euler": 1, "fm-rk4": 4}
CFG_W = [0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


class CountingNet:
    """The net, counting the rows it evaluates (NFE x samples)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.rows = net, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.net(x, t, y)


def draw(ckpt: Checkpoint, net: CountingNet, spec: SampleSpec) -> tuple[np.ndarray, float]:
    """(samples in data space, NFE per sample) of one request run in this process."""
    net.rows = 0
    with torch.inference_mode():
        x = to_data_space(ckpt, sample(ckpt, net, spec))
    return x, net.rows / spec.num_samples


def moons_frontier(models: Path, quick: bool, n: int) -> list[dict]:
    grid = QUICK if quick else GRID
    rows = []
    for model in MOONS:
        ckpt = load_checkpoint(models / model)
        net = CountingNet(ckpt.net("ema"))
        for name in samplers.samplers_for(ckpt.objective):
            settings = (
                [{"steps": 10, "rtol": tol, "atol": tol, "max_nfe": 2000} for tol in DOPRI5_TOLS]
                if name == "fm-dopri5"
                else [{"steps": k} for k in grid[name]]
            )
            if model in SPACING and "spacing" in samplers.SAMPLERS[name].options:
                settings = [{**s, "spacing": SPACING[model]} for s in settings]
            for s in settings:
                x, nfe = draw(ckpt, net, SampleSpec(name, num_samples=n, seed=1, **s))
                rows.append({"model": model, "sampler": name, **s, "nfe": nfe, "sw_ratio": round(sw_ratio(x), 3)})
                print(f"{model:18s} {name:13s} {s} nfe={nfe:.0f} sw={rows[-1]['sw_ratio']:.3f}", flush=True)
        if model in SPACING:
            x, nfe = draw(ckpt, net, SampleSpec("dpm-solver++", 20, n, seed=1, spacing="trailing"))
            rows.append(
                {
                    "model": model,
                    "sampler": "dpm-solver++ trailing",
                    "steps": 20,
                    "nfe": nfe,
                    "sw_ratio": round(sw_ratio(x), 3),
                }
            )
    return rows


def default_choice(models: Path, quick: bool, n: int) -> list[dict]:
    """Per DDPM moons model: SW ratio mean / sd over seeds of ancestral ddpm K = 1000 and of each
    CHOICE_SOLVERS x CHOICE_SPACINGS at K = 10 (10 NFE), the seed setting both the draw and the metric's."""
    seeds = range(2 if quick else CHOICE_SEEDS)
    cells = [("ddpm", 1000, None)] + [(s, 10, sp) for s in CHOICE_SOLVERS for sp in CHOICE_SPACINGS]
    out = []
    for model in MOONS:
        ckpt = load_checkpoint(models / model)
        if ckpt.objective.kind != "ddpm":
            continue
        net = CountingNet(ckpt.net("ema"))
        for name, k, spacing in cells:
            vals = []
            for seed in seeds:
                x, _ = draw(ckpt, net, SampleSpec(name, k, n, seed=100 + seed, spacing=spacing))
                vals.append(sw_ratio(x, seed=seed))
            out.append(choice_row(model, name, k, spacing, vals))
            print(f"choice {model:18s} {name:13s} K={k} {spacing} {out[-1]['mean']} +- {out[-1]['sd']}", flush=True)
    return out


def choice_row(model: str, sampler: str, k: int, spacing: str | None, vals: list[float]) -> dict:
    """One cell of a default-configuration table: the metric's mean / sd over seeds, and each seed's value."""
    return {
        "model": model,
        "sampler": sampler,
        "steps": k,
        "spacing": spacing,
        "mean": round(float(np.mean(vals)), 3),
        "sd": round(float(np.std(vals)), 3),
        "per_seed": [round(v, 3) for v in vals],
    }


DIGITS_CHOICE_SEEDS = 3


def digits_choice(models: Path, quick: bool, per_class: int, name: str = "digits-ddpm") -> list[dict]:
    """A digits DDPM model (`name` under `models`; digits-ddpm's default spacing is chosen by this) measured:
    the Frechet distance (digits classifier features; mean / sd over seeds, each seed a fresh draw of
    `per_class` a class) of ancestral ddpm K = 1000 and of each CHOICE_SOLVERS x CHOICE_SPACINGS at K = 10
    (10 NFE), class-conditional, unguided."""
    ckpt = load_checkpoint(models / name)
    net = CountingNet(ckpt.net("ema"))
    cells = [("ddpm", 1000, None)] + [(s, 10, sp) for s in CHOICE_SOLVERS for sp in CHOICE_SPACINGS]
    out = []
    for sampler, k, spacing in cells:
        scores = [
            class_scores(ckpt, net, sampler, k, None, per_class, seed=1000 * (seed + 1), spacing=spacing)
            for seed in range(2 if quick else DIGITS_CHOICE_SEEDS)
        ]
        accuracy = round(float(np.mean([sc["accuracy"] for sc in scores])), 3)
        row = choice_row(name, sampler, k, spacing, [sc["frechet"] for sc in scores])
        out.append({**row, "accuracy": accuracy, "floor": scores[0]["floor"]})
        print(f"digits choice {name} {sampler:13s} K={k} {spacing} {out[-1]['mean']} +- {out[-1]['sd']}", flush=True)
    return out


def digits_choice_lines(rows: list[dict], models: Path, variants: dict[str, list[dict]] | None = None) -> list[str]:
    """The digits-ddpm spacing table and what it says about the checkpoint's default spacing."""
    if not rows:
        return []
    anc = next(r for r in rows if r["sampler"] == "ddpm")
    lines = [
        "",
        "**digits-ddpm** (DDPM, cosine beta, v; a DiT): Frechet distance in the digits classifier's features "
        "(lower is better; mean +- sd over seeds, a fresh draw each; data against data "
        f"{anc['floor']:.2g}), class-conditional, unguided, at K = 10 with each solver and spacing:",
        "",
        "| sampler | " + " | ".join(f"10 NFE, {sp}" for sp in CHOICE_SPACINGS) + " |",
        "|---|" + "---|" * len(CHOICE_SPACINGS),
    ]
    for name in CHOICE_SOLVERS:
        cells = [next(r for r in rows if r["sampler"] == name and r["spacing"] == sp) for sp in CHOICE_SPACINGS]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r['mean']:.3g} +- {r['sd']:.2g} (accuracy {r['accuracy']:.3f})" for r in cells)
            + " |"
        )
    top = min((r for r in rows if r["sampler"] != "ddpm"), key=lambda r: r["mean"])
    spacing = load_checkpoint(models / "digits-ddpm").default_spacing or "trailing"
    at_default = min((r for r in rows if r["spacing"] == spacing), key=lambda r: r["mean"])
    lines += [
        "",
        f"Ancestral ddpm K = 1000: {anc['mean']:.3g} +- {anc['sd']:.2g} (accuracy {anc['accuracy']:.3f}). Lowest "
        f"mean at 10 NFE: {top['sampler']} {top['spacing']} ({top['mean']:.3g}). The checkpoint's default spacing "
        f"({spacing}, its config's `sampling`) at 10 NFE: {at_default['mean']:.3g} with {at_default['sampler']}, "
        f"{at_default['mean'] / anc['mean']:.2f}x its ancestral K = 1000 (accuracy {at_default['accuracy']:.3f}). "
        "The spacings differ by less than leading's seed-to-seed spread in Frechet distance, while leading (whose "
        "first step starts below t = 999) costs class accuracy. Trailing and linspace, which start at t = 999, "
        "hardly move between seeds.",
    ]
    if not variants:
        return lines + ["Its schedule and target (cosine, v) were carried over from the moons measurement."]
    table = {"digits-ddpm": rows, **variants}
    lines += [
        "",
        "Its schedule and target against variants of it (configs/digits-ddpm-*.yaml, the same DiT and training; "
        "trained for this measurement only, not committed: `python -m training --config configs/NAME.yaml --out "
        "DIR`, then `bench.knobs.digits_choice(DIR, False, 50, NAME)`), Frechet distance (class accuracy):",
        "",
        "| model | objective | ancestral ddpm K = 1000 | "
        + " | ".join(f"10 NFE, {sp}" for sp in CHOICE_SPACINGS)
        + " | best 10 NFE over ancestral |",
        "|---|---|---|" + "---|" * len(CHOICE_SPACINGS) + "---|",
    ]
    best: dict[str, dict] = {}
    for model, rs in table.items():
        anc = next(r for r in rs if r["sampler"] == "ddpm")
        cells = []
        for sp in CHOICE_SPACINGS:
            top = min((r for r in rs if r["spacing"] == sp), key=lambda r: r["mean"])
            cells.append(f"{_fr(top['mean'])} ({top['accuracy']:.2f}, {top['sampler']})")
        best[model] = min((r for r in rs if r["sampler"] != "ddpm"), key=lambda r: r["mean"])
        what = DIGITS_VARIANTS.get(model, "cosine beta, v")
        ratio = best[model]["mean"] / anc["mean"]
        lines.append(
            f"| {model} | {what} | {_fr(anc['mean'])} ({anc['accuracy']:.2f}) | {' | '.join(cells)} | {ratio:.3g} |"
        )
    winner = min(best, key=lambda m: best[m]["mean"])
    lines += [
        "",
        f"Lowest mean at 10 NFE: **{winner}** ({DIGITS_VARIANTS.get(winner, 'cosine beta, v')}, "
        f"{best[winner]['sampler']} {best[winner]['spacing']}: {_fr(best[winner]['mean'])}); digits-ddpm's best "
        f"{_fr(best['digits-ddpm']['mean'])}.",
    ]
    return lines


DIGITS_VARIANTS = {
    "digits-ddpm-linear": "linear beta, eps",
    "digits-ddpm-cosine": "cosine beta, eps",
    "digits-ddpm-v": "linear beta, v",
}


def _fr(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.2g}"


def choice_lines(choice: list[dict], models: Path) -> list[str]:
    """The default-configuration table and what it says about the shipped default."""
    lines = [
        "| model | what it is | ancestral ddpm K = 1000 | "
        + " | ".join(f"10 NFE, {sp}" for sp in CHOICE_SPACINGS)
        + " | best 10 NFE over ancestral |",
        "|---|---|---|" + "---|" * len(CHOICE_SPACINGS) + "---|",
    ]
    best: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in choice):
        rows = [r for r in choice if r["model"] == model]
        anc = next(r for r in rows if r["sampler"] == "ddpm")
        cells = []
        for sp in CHOICE_SPACINGS:
            top = min((r for r in rows if r["spacing"] == sp), key=lambda r: r["mean"])
            cells.append(f"{top['mean']:.3g} +- {top['sd']:.2g} ({top['sampler']})")
        best[model] = min((r for r in rows if r["sampler"] != "ddpm"), key=lambda r: r["mean"])
        ratio = best[model]["mean"] / anc["mean"]
        lines.append(
            f"| {model} | {MOONS[model]} | {anc['mean']:.3g} +- {anc['sd']:.2g} | {' | '.join(cells)} | {ratio:.3g} |"
        )
    winner = min(best, key=lambda m: best[m]["mean"])
    default = load_checkpoint(models / "moons-ddpm")
    spacing = default.default_spacing or "trailing"
    rows = [r for r in choice if r["model"] == "moons-ddpm"]
    at_default = min((r for r in rows if r["spacing"] == spacing), key=lambda r: r["mean"])
    anc = next(r for r in rows if r["sampler"] == "ddpm")
    top = best[winner]
    versus = (
        "the lowest mean here"
        if winner == "moons-ddpm"
        else f"{(at_default['mean'] - top['mean']) / max(top['sd'], 1e-12):.2f} sd of {winner} above its mean"
    )
    broken = [
        f"{m} ({r['mean']:.3g})"
        for m in best
        for r in choice
        if r["model"] == m and r["sampler"] == "ddpm" and r["mean"] > 2.0
    ]
    lines += [
        "",
        f"Lowest mean at 10 NFE: **{winner}** ({MOONS[winner]}, {top['sampler']}, {top['spacing']}: "
        f"{top['mean']:.3g} +- {top['sd']:.2g}). The shipped moons-ddpm ({MOONS['moons-ddpm']}, default spacing "
        f"{spacing}) at 10 NFE: {at_default['mean']:.3g} +- {at_default['sd']:.2g} with {at_default['sampler']} "
        f"({versus}), **{at_default['mean'] / anc['mean']:.2f}x** its ancestral K = 1000 ({anc['mean']:.3g}; "
        "goal <= 1.10x)."
        + (f" Ancestral K = 1000 fails (SW ratio > 2) on {', '.join(broken)}." if broken else "")
        + " Means +- sd over the seeds; a single seed's ratio moves by about as much as the models differ, "
        "so compare means.",
    ]
    return lines


def min_nfe(rows: list[dict], model: str, sampler: str, threshold: float) -> float | None:
    """Smallest measured NFE whose SW ratio is within the threshold (None: no grid point reached it)."""
    ok = [r["nfe"] for r in rows if r["model"] == model and r["sampler"] == sampler and r["sw_ratio"] <= threshold]
    return min(ok) if ok else None


def digits_rows(models: Path, quick: bool, per_class: int) -> tuple[list[dict], list[dict]]:
    """MLP against DiT (both FM, linear path) over K with fm-rk4 at w = 1 (conditional), and a w sweep at K = 10."""
    nets, guidance = [], []
    for model, arch in (("digits-fm", "DiT"), ("digits-fm-mlp", "MLP")):
        ckpt = load_checkpoint(models / model)
        net = CountingNet(ckpt.net("ema"))
        params = sum(p.numel() for p in net.net.parameters())
        for k in [2, 5, 10] if quick else [1, 2, 3, 5, 10, 20]:
            scores = class_scores(ckpt, net, "fm-rk4", k, None, per_class)
            nets.append({"model": model, "net": arch, "params": params, "steps": k, "nfe": 4 * k, **scores})
            print(f"{model} K={k} {scores}", flush=True)
        for w in [0.0, 1.0, 3.0] if quick else CFG_W:
            scores = class_scores(ckpt, net, "fm-rk4", 10, w, per_class)
            guidance.append({"model": model, "net": arch, "w": w, **scores})
            print(f"{model} w={w} {scores}", flush=True)
    return nets, guidance


def class_scores(
    ckpt: Checkpoint,
    net: CountingNet,
    name: str,
    k: int,
    w: float | None,
    per_class: int,
    seed: int = 100,
    spacing: str | None = None,
) -> dict:
    """Classifier accuracy and Frechet distance of `per_class` samples a class (class c drawn with seed + c)."""
    images, labels = [], []
    for c in range(ckpt.num_classes):
        spec = SampleSpec(name, k, per_class, guidance=w, class_label=c, seed=seed + c, spacing=spacing)
        x, _ = draw(ckpt, net, spec)
        images.append(x)
        labels.append(np.full(per_class, c))
    quality = shapes_quality if ckpt.data_kind == "shapes" else digits_quality
    q = quality(np.concatenate(images), np.concatenate(labels))
    return {
        "accuracy": round(q["accuracy"], 3),
        "frechet": round(q["frechet"], 3),
        "floor": round(q["frechet_data"], 2),
    }


# Latent models (a DiT in models/shapes-vae's latent space) and the samplers their section measures.
LATENT = {
    "shapes-latent-fm": ("fm-euler", "fm-rk4", "fm-unipc"),
    "shapes-latent-ddpm": ("ddim", "dpm-solver++", "unipc"),
}
LATENT_K = (2, 5, 10, 20, 50)
LATENT_W = (None, 2.0)


def latent_rows(models: Path, quick: bool) -> list[dict]:
    """Each committed latent model: its deterministic samplers over LATENT_K, unguided and at w = 2, by the shapes
    classifier's accuracy and the Frechet distance in its features (100 a class, decoded by the model's decoder),
    and the autoencoder's own floor: its reconstructions of fresh images scored the same way."""
    out = []
    for model, names in LATENT.items():
        if not (models / model / "manifest.json").is_file():
            continue
        ckpt = load_checkpoint(models / model)
        net = CountingNet(ckpt.net("ema"))
        for name in names:
            for k in LATENT_K[::2] if quick else LATENT_K:
                for w in LATENT_W:
                    nfe = k * samplers.SAMPLERS[name].evals_per_step * (2 if w else 1)
                    row = {"model": model, "sampler": name, "steps": k, "w": w, "nfe": nfe}
                    row |= class_scores(ckpt, net, name, k, w, 20 if quick else 100)
                    out.append(row)
                    print(f"latent {row}", flush=True)
    return out


def autoencoder_floor(models: Path, per_class: int = 100) -> dict | None:
    """The shapes classifier's scores on the autoencoder's reconstructions of fresh images (what a latent model's
    decoded samples can reach at best), beside the same images unreconstructed."""
    from training.autoencoder import load_autoencoder
    from training.shapes import CLASSES, shapes_of

    if not (models / "shapes-vae" / "manifest.json").is_file():
        return None
    vae = load_autoencoder(models / "shapes-vae").vae("ema")
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = shapes_of(labels, seed=77)
    with torch.inference_mode():
        x = torch.from_numpy(images) * 2 - 1
        recon = ((vae.decode(vae.encode(x)[0]) + 1) / 2).clamp(0, 1).numpy()
    data, rec = shapes_quality(images, labels), shapes_quality(recon, labels)
    return {
        "data": {"accuracy": round(data["accuracy"], 3), "frechet": round(data["frechet"], 2)},
        "reconstruction": {"accuracy": round(rec["accuracy"], 3), "frechet": round(rec["frechet"], 2)},
        "floor": round(data["frechet_data"], 2),
    }


def latent_lines(rows: list[dict], floor: dict | None) -> list[str]:
    if not rows:
        return ["No latent model in the models directory (configs/shapes-latent-*.yaml, `make train`).", ""]
    lines = [
        "A DiT in the 8x8x4 latent space of `models/shapes-vae`, its samples decoded by the checkpoint's decoder "
        "and scored by `training.shapes`' held-out classifier (class accuracy; Frechet distance in its features "
        "to fresh images of the same kinds), 100 samples a class. NFE per sample (a guided evaluation runs 2 rows).",
        "",
    ]
    if floor:
        lines += [
            f"The autoencoder bounds what a latent model can reach: fresh images read accuracy "
            f"{floor['data']['accuracy']}, Frechet {floor['data']['frechet']}; their reconstructions "
            f"{floor['reconstruction']['accuracy']}, Frechet {floor['reconstruction']['frechet']} (data against data "
            f"{floor['floor']}).",
            "",
        ]
    lines += ["| model | sampler | K | w | NFE | accuracy | Frechet |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['w'] or '-'} | {r['nfe']} | {r['accuracy']} | "
        f"{r['frechet']} |"
        for r in rows
    ]
    return [*lines, ""]


# Distilled students (python -m distill) and their teachers: (student, teacher, metric).
DISTILLED = (("moons-fm-reflow", "moons-fm"), ("digits-fm-reflow", "digits-fm"))
FEW_K = (1, 2, 4)
TEACHER_REF = ("fm-rk4", 20)  # the teacher's reference point: 80 NFE, where its quality has levelled off


def distilled_rows(models: Path, quick: bool, n: int) -> list[dict]:
    """Each committed student and its teacher at K = 1, 2, 4 with fm-euler, beside the teacher's fm-rk4 K = 20:
    moons by SW ratio (mean +- sd over seeds, unconditional), digits by class accuracy and Frechet distance
    (class-conditional, w = 1, 100 a class)."""
    out = []
    cells = [(TEACHER_REF, "teacher")] + [(("fm-euler", k), role) for k in FEW_K for role in ("teacher", "student")]
    for student, teacher in DISTILLED:
        if not (models / student / "manifest.json").is_file():
            continue
        ckpts = {"student": load_checkpoint(models / student), "teacher": load_checkpoint(models / teacher)}
        nets = {role: CountingNet(c.net("ema")) for role, c in ckpts.items()}
        for (name, k), role in cells:
            ckpt, net = ckpts[role], nets[role]
            row = {"student": student, "model": ckpt.name, "role": role, "sampler": name, "steps": k}
            if ckpt.data_kind == "moons":
                vals = []
                for seed in range(2 if quick else CHOICE_SEEDS):
                    x, nfe = draw(ckpt, net, SampleSpec(name, k, n, seed=100 + seed))
                    vals.append(sw_ratio(x, seed=seed))
                row |= {"nfe": nfe, "mean": round(float(np.mean(vals)), 3), "sd": round(float(np.std(vals)), 3)}
            else:
                row |= {"nfe": k * samplers.SAMPLERS[name].evals_per_step}
                row |= class_scores(ckpt, net, name, k, None, 20 if quick else 100)
            out.append(row)
            print(f"distilled {row}", flush=True)
    return out


def distilled_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["No distilled student in the models directory (`python -m distill`, `make train`)."]
    lines = []
    for student in dict.fromkeys(r["student"] for r in rows):
        mine = [r for r in rows if r["student"] == student]
        ref = next(r for r in mine if r["role"] == "teacher" and (r["sampler"], r["steps"]) == TEACHER_REF)
        if "mean" in ref:
            lines += [
                f"**{student}** (from {ref['model']}; SW ratio, mean +- sd over the seeds, unconditional):",
                "",
                "| net | sampler | K | NFE | SW ratio | over the teacher's fm-rk4 K = 20 |",
                "|---|---|---|---|---|---|",
                *[
                    f"| {r['role']} ({r['model']}) | {r['sampler']} | {r['steps']} | {r['nfe']:g} | "
                    f"{r['mean']} +- {r['sd']} | {r['mean'] / ref['mean']:.2f}x |"
                    for r in mine
                ],
                "",
            ]
            one = next(r for r in mine if r["role"] == "student" and r["steps"] == 1)
            lines += [
                f"{student} at K = 1 (1 NFE): **{one['mean'] / ref['mean']:.2f}x** its teacher at 80 NFE "
                "(goal <= 1.20x).",
                "",
            ]
        else:
            lines += [
                f"**{student}** (from {ref['model']}; class-conditional, w = 1; Frechet of data vs data "
                f"{ref['floor']}):",
                "",
                "| net | sampler | K | NFE | accuracy | Frechet |",
                "|---|---|---|---|---|---|",
                *[
                    f"| {r['role']} ({r['model']}) | {r['sampler']} | {r['steps']} | {r['nfe']:g} | {r['accuracy']} | "
                    f"{r['frechet']} |"
                    for r in mine
                ],
                "",
            ]
    return lines


def plot_frontiers(rows: list[dict], img: Path) -> list[str]:
    names = []
    for kind, models in (("ddpm", [m for m in MOONS if "ddpm" in m]), ("fm", [m for m in MOONS if "fm" in m])):
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), sharey=True, squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            for name in dict.fromkeys(r["sampler"] for r in rows if r["model"] == model):
                pts = sorted((r["nfe"], r["sw_ratio"]) for r in rows if r["model"] == model and r["sampler"] == name)
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
            ax.axhline(1.3, color="grey", ls="--", lw=0.8)
            ax.set(xscale="log", yscale="log", xlabel="NFE per sample", title=f"{model}\n{MOONS[model]}")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("SW ratio (1 = data)")
        fig.tight_layout()
        names.append(f"knobs-frontier-{kind}.png")
        fig.savefig(img / names[-1], dpi=110)
        plt.close(fig)
    return names


def plot_digits(nets: list[dict], guidance: list[dict], img: Path) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for arch in ("DiT", "MLP"):
        pts = [(r["nfe"], r["frechet"]) for r in nets if r["net"] == arch]
        axes[0].plot(
            *zip(*pts, strict=True),
            marker="o",
            label=f"{arch} ({nets[[r['net'] for r in nets].index(arch)]['params']:,} params)",
        )
        wpts = [(r["w"], r["accuracy"]) for r in guidance if r["net"] == arch]
        axes[1].plot(*zip(*wpts, strict=True), marker="o", label=arch)
    axes[0].set(
        xscale="log", yscale="log", xlabel="NFE (fm-rk4)", ylabel="Frechet distance", title="digits: MLP vs DiT"
    )
    axes[1].set(xlabel="guidance w", ylabel="class accuracy", title="digits: CFG w (fm-rk4, K = 10)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "knobs-digits.png", dpi=110)
    plt.close(fig)
    return ["knobs-digits.png"]


def fmt(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.0f}"


def report(
    rows: list[dict],
    nets: list[dict],
    guidance: list[dict],
    images: list[str],
    commands: list[str],
    n: int,
    choice: list[dict],
    models: Path,
    distilled: list[dict],
    latent: list[dict] | None = None,
    latent_floor: dict | None = None,
    digits_choice_rows: list[dict] | None = None,
    digits_variants: dict[str, list[dict]] | None = None,
) -> str:
    lines = [
        "# Knobs: measured",
        "",
        f"Made by {', '.join(f'`{c}`' for c in commands)} (`make knobs` runs them all); numbers in "
        f"`docs/knobs.json`. Moons: {n} samples a point, seed 1,",
        "SW ratio of `training.metrics` (1.0 = another draw of the data); NFE counted at the net per sample. Each",
        "frontier point is one run on one seed, and one seed's SW ratio moves by ~25 % (sd over seeds, in the",
        "default-configuration table below): read the curves' shapes, not differences between single points.",
        "",
        "## Default DDPM configuration: 10 NFE with a deterministic solver",
        "",
        f"Every DDPM moons model: the better of {' / '.join(CHOICE_SOLVERS)} at K = 10 for each spacing, beside the",
        f"ancestral sampler at K = 1000; SW ratio mean +- sd over {len(choice[0]['per_seed'])} seeds, {n} samples",
        "each. The shipped moons-ddpm is chosen from this table: the lowest 10-NFE mean among the configurations",
        "whose ancestral sampler also works, with its best spacing as the checkpoint's default",
        "(`sampling: {spacing: ...}` in its config, the manifest's `sampling`).",
        "",
        *choice_lines(choice, models),
        *digits_choice_lines(digits_choice_rows or [], models, digits_variants),
        "",
        "## Quality against NFE",
        "",
        *[f"![{name}](img/{name})" for name in images[:2]],
        "",
        "## Fewest NFE to a target quality, beside the teaching text's rules of thumb",
        "",
        'Smallest measured NFE on the grid whose SW ratio is <= 1.3 ("visibly good") and <= 2.0 ("recognizable");',
        "the lesson's K for 32-256 px images is given in NFE (RK4: 4 a step).",
        "",
        "| model | sampler | NFE for SW <= 1.3 | NFE for SW <= 2.0 | lesson: visibly good | lesson: rough |",
        "|---|---|---|---|---|---|",
    ]
    for model in MOONS:
        for name in dict.fromkeys(r["sampler"] for r in rows if r["model"] == model):
            good, rough = (min_nfe(rows, model, name, th) for th in THRESHOLDS)
            lesson = LESSON_K.get(name)
            ev = LESSON_EVALS.get(name, 1)
            cells = [str(lesson[0] * ev), str(lesson[1] * ev)] if lesson else ["-", "-"]
            lines.append(f"| {model} | {name} | {fmt(good)} | {fmt(rough)} | {cells[0]} | {cells[1]} |")
    dpm, ddim = (min_nfe(rows, "moons-ddpm", s, 1.3) for s in ("dpm-solver++", "ddim"))
    lines += [
        "",
        f"**moons-ddpm, SW ratio <= 1.3:** dpm-solver++ needs {fmt(dpm)} NFE, DDIM {fmt(ddim)} (target: <= 20; one "
        "seed a point).",
        "",
        "## What agrees with the lesson and what does not",
        "",
        *observations(rows),
        "",
        "## MLP against DiT on digits (FM, linear path, fm-rk4, class-conditional, w = 1)",
        "",
        "| net | params | K | NFE | accuracy | Frechet | Frechet of data vs data |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['net']} | {r['params']:,} | {r['steps']} | {r['nfe']} | {r['accuracy']} | {r['frechet']} "
            f"| {r['floor']} |"
            for r in nets
        ],
        "",
        "## Distilled few-step students (rectified-flow reflow)",
        "",
        "`python -m distill` trains a student on (noise, teacher sample) couplings drawn with the teacher's ODE "
        "(configs/*-reflow.yaml; docs/samplers.md). Its paths are straighter, so fm-euler at K = 1-4 lands near "
        "where the teacher needs many more steps.",
        "",
        *distilled_lines(distilled),
        "## Latent models: quality against K",
        "",
        *latent_lines(latent or [], latent_floor),
        "## Classifier-free guidance w (fm-rk4, K = 10; a guided evaluation runs 2 rows)",
        "",
        "| net | w | accuracy | Frechet |",
        "|---|---|---|---|",
        *[f"| {r['net']} | {r['w']} | {r['accuracy']} | {r['frechet']} |" for r in guidance],
        "",
        f"![digits](img/{images[-1]})",
        "",
    ]
    return "\n".join(lines)


def observations(rows: list[dict]) -> list[str]:
    """Sentences comparing the measurements with the lesson's claims, each with its numbers."""

    def at(model: str, sampler: str, steps: int) -> float | None:
        hit = [
            r["sw_ratio"] for r in rows if r["model"] == model and r["sampler"] == sampler and r.get("steps") == steps
        ]
        return hit[0] if hit else None

    out = []
    for name, (good, _) in LESSON_K.items():
        model = "moons-ddpm" if name in ("ddpm", "ddim") else "moons-fm"
        got = min_nfe(rows, model, name, 1.3)
        verdict = "within" if got is not None and got <= good * LESSON_EVALS[name] else "beyond"
        reached = f"at {got:.0f} NFE" if got is not None else "not reached on the grid"
        out.append(
            f"- {name} on {model}: SW <= 1.3 {reached}, {verdict} the lesson's 'visibly good' "
            f"{good * LESSON_EVALS[name]} NFE."
        )
    for name, k in (("ddim", 10), ("ddim", 50), ("dpm-solver++", 10)):
        lin, cos = at("moons-ddpm-linear", name, k), at("moons-ddpm-cosine", name, k)
        if lin is not None and cos is not None:
            better = "cosine" if cos < lin else "linear"
            out.append(
                f"- Schedule (eps), {name} K = {k}: linear (trailing) {lin}, cosine (leading) {cos} ({better} "
                "better). The lesson expects linear to be fine in 2-D and cosine to matter on images."
            )
    broken = at("moons-ddpm-cosine", "dpm-solver++ trailing", 20)
    if broken is not None:
        out.append(
            f"- Not in the lesson: cosine + eps with a grid starting at t = 999 (trailing) fails, dpm-solver++ K = 20 "
            f"scores {broken}: alpha_bar_999 = 2.4e-9, so x0 = (x - sigma eps) / alpha multiplies the net's eps error "
            "by 2e4. A v or x0 target (x0 = alpha x - sigma v) or a grid that starts lower (leading) avoids it."
        )
    for k in (10, 50):
        vals = {t: at(f"moons-ddpm{s}", "ddim", k) for t, s in (("eps", "-linear"), ("v", "-v"), ("x0", "-x0"))}
        if None not in vals.values():
            out.append(f"- Target (linear beta), DDIM K = {k}: " + ", ".join(f"{t} {v}" for t, v in vals.items()) + ".")
    for k in (5, 10):
        lin, vp = at("moons-fm", "fm-euler", k), at("moons-fm-vp", "fm-euler", k)
        if lin is not None and vp is not None:
            better = "VP" if vp < lin else "linear"
            out.append(f"- Path, fm-euler K = {k}: linear {lin}, VP {vp} ({better} better with uniform steps).")
    return out


SECTIONS = ("moons", "choice", "digits-choice", "digits", "distilled", "latent")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.knobs", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models", help="directory of the committed checkpoints")
    p.add_argument("--out", default="docs", help="writes knobs.md, knobs.json and img/knobs-*.png here")
    p.add_argument("--quick", action="store_true", help="a coarse grid (smoke run)")
    p.add_argument("--samples", type=int, default=2000, help="moons samples per point")
    p.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="measure only this section (repeatable) and take the others from OUT/knobs.json: moons (quality "
        "against NFE), choice (the default DDPM configuration), digits-choice (digits-ddpm's spacing at 10 NFE), "
        "digits (MLP vs DiT, CFG w), distilled (reflow "
        "students), latent (the latent models against K)",
    )
    p.add_argument(
        "--from-json",
        action="store_true",
        help="measure nothing: redraw the plots and rewrite knobs.md from OUT/knobs.json (after a change to the "
        "report's text)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    models, out = Path(args.models), Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    measure = set() if args.from_json else set(args.only or SECTIONS)
    data: dict = {}
    if measure != set(SECTIONS):
        try:
            data = json.loads((out / "knobs.json").read_text())
        except (OSError, ValueError) as e:
            p.error(f"--only / --from-json take the other sections from {out / 'knobs.json'}: {e}")
        missing = [k for k in ("moons", "default_choice", "digits_nets", "cfg") if k not in data]
        if missing:
            p.error(f"{out / 'knobs.json'} lacks {missing}: run the full report once (python -m bench.knobs)")
        args.samples = data.get("samples", args.samples)
    command = "python -m bench.knobs" + (" --quick" if args.quick else "")
    if "moons" in measure:
        data["moons"] = moons_frontier(models, args.quick, args.samples)
    if "choice" in measure:
        data["default_choice"] = default_choice(models, args.quick, args.samples)
    if "digits-choice" in measure:
        data["digits_choice"] = digits_choice(models, args.quick, per_class=20 if args.quick else 50)
    if "digits" in measure:
        data["digits_nets"], data["cfg"] = digits_rows(models, args.quick, per_class=20 if args.quick else 100)
    if "distilled" in measure:
        data["distilled"] = distilled_rows(models, args.quick, args.samples)
    if "latent" in measure:
        data["latent"], data["latent_floor"] = latent_rows(models, args.quick), autoencoder_floor(models)
    data["samples"] = args.samples
    data.setdefault("commands", {})
    for section in measure:
        data["commands"][section] = command + ("" if measure == set(SECTIONS) else f" --only {section}")
    rows, choice, nets, guidance = data["moons"], data["default_choice"], data["digits_nets"], data["cfg"]
    if measure:
        (out / "knobs.json").write_text(json.dumps(data, indent=1))
    images = plot_frontiers(rows, out / "img") + plot_digits(nets, guidance, out / "img")
    made = sorted(set(data["commands"].values())) or [command]
    text = report(
        rows,
        nets,
        guidance,
        images,
        made,
        args.samples,
        choice,
        models,
        data.get("distilled", []),
        data.get("latent", []),
        data.get("latent_floor"),
        data.get("digits_choice"),
        data.get("digits_variants"),
    )
    (out / "knobs.md").write_text(text)
    print(f"wrote {out / 'knobs.md'} in {time.perf_counter() - t0:.0f} s")
    return 0 if all(math.isfinite(r["sw_ratio"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
