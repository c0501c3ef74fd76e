"""What K costs: latency = a + b * NFE per sampler and load level, and the SLO table built on it.

NFE counts net rows per sample, as the service reports it (steps x evaluations per step, x 2 when
guided), so one line serves ddpm, ddim, fm-euler and fm-rk4 alike; a is the fixed cost of a request
(HTTP, queueing at that load, result encoding), b the cost of one evaluation at that load's batch size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

DEFAULT_BUDGETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
# Below this r^2 the p95 line explains too little of the sweep to be read off: k_model is left empty.
MIN_R2 = 0.5


def fit_line(x: list[float], y: list[float]) -> dict[str, float] | None:
    """Least squares y = a + b x with r^2; None with fewer than two distinct x."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(np.unique(xs)) < 2:
        return None
    design = np.stack([np.ones_like(xs), xs], axis=1)  # (n, 2)
    (a, b), *_ = np.linalg.lstsq(design, ys, rcond=None)
    resid = ys - (a + b * xs)
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return {"a_s": float(a), "b_s_per_nfe": float(b), "r2": r2}


def _usable(cell: dict[str, Any]) -> bool:
    return cell.get("nfe") is not None and cell["latency_s"]["p95"] is not None


def _groups(cells: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        if _usable(cell):
            groups[(cell["sampler"], cell["load"])].append(cell)
    return groups


def fit_cost_models(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (sampler, load): fits of the cells' p50 and p95 latency against their NFE."""
    out = []
    for (sampler, load), group in sorted(_groups(cells).items()):
        nfe = [c["nfe"] for c in group]
        out.append(
            {
                "sampler": sampler,
                "mode": group[0]["mode"],
                "load": load,
                "points": len(group),
                "nfe_per_step": float(np.median([c["nfe"] / c["steps"] for c in group])),
                "p50": fit_line(nfe, [c["latency_s"]["p50"] for c in group]),
                "p95": fit_line(nfe, [c["latency_s"]["p95"] for c in group]),
            }
        )
    return out


def slo_table(
    cells: list[dict[str, Any]],
    models: list[dict[str, Any]],
    budgets: tuple[float, ...] = DEFAULT_BUDGETS_S,
    max_steps: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """For each budget L, sampler and load: the largest swept K whose p95 <= L with no errors
    (k_measured), and the largest K the p95 line allows, floor((L - a) / (b * nfe_per_step)) (k_model;
    `extrapolated` when beyond the swept range; only from a line with b > 0 and r^2 >= MIN_R2). None
    where no K meets the budget. A line never proposes more than the sampler's `max_steps` (the service
    refuses any larger K): k_model is capped there, `capped` set and the line's own value kept as k_line."""
    groups = _groups(cells)
    fits = {(m["sampler"], m["load"]): m for m in models}
    rows = []
    for (sampler, load), group in sorted(groups.items()):
        swept = sorted(c["steps"] for c in group)
        for budget in budgets:
            meets = [c["steps"] for c in group if c["latency_s"]["p95"] <= budget and not c["errors"]]
            k_line = None
            fit = fits.get((sampler, load), {}).get("p95")
            if fit and fit["b_s_per_nfe"] > 0 and fit["r2"] >= MIN_R2:
                k = math.floor((budget - fit["a_s"]) / (fit["b_s_per_nfe"] * fits[(sampler, load)]["nfe_per_step"]))
                k_line = k if k >= 1 else None
            top = (max_steps or {}).get(sampler)
            capped = k_line is not None and top is not None and k_line > top
            k_model = top if capped else k_line
            rows.append(
                {
                    "sampler": sampler,
                    "mode": group[0]["mode"],
                    "load": load,
                    "budget_s": budget,
                    "k_measured": max(meets) if meets else None,
                    "k_model": k_model,
                    "extrapolated": k_model is not None and not swept[0] <= k_model <= swept[-1],
                    "k_line": k_line,
                    "max_steps": top,
                    "capped": capped,
                }
            )
    return rows
