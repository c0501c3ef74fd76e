"""Every conversion between the DDPM prediction targets, in one place.

With a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t) (so a^2 + s^2 = 1):
    x_t = a x0 + s eps,   v = a eps - s x0   (Salimans & Ho 2022, diffusers' "v_prediction").
Hence x0 = a x_t - s v and eps = s x_t + a v. Every function takes `alpha_bar` broadcastable to x.
"""

from __future__ import annotations

from torch import Tensor

TARGETS = ("eps", "v", "x0")


def _a_s(alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return (x_t - s * eps) / a


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return (x_t - a * x0) / s


def eps_to_v(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return a * eps - s * eps_to_x0(x_t, eps, alpha_bar)


def v_to_x0(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return a * x_t - s * v


def v_to_eps(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return s * x_t + a * v


def x0_to_v(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    a, s = _a_s(alpha_bar)
    return a * x0_to_eps(x_t, x0, alpha_bar) - s * x0


def target_from(x0: Tensor, eps: Tensor, alpha_bar: Tensor, target: str) -> Tensor:
    """The regression target for a training pair (x0, eps)."""
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        a, s = _a_s(alpha_bar)
        return a * eps - s * x0
    raise ValueError(f"unknown prediction target {target!r}; expected one of {TARGETS}")


def to_eps_x0(x_t: Tensor, pred: Tensor, alpha_bar: Tensor, target: str) -> tuple[Tensor, Tensor]:
    """(eps_hat, x0_hat) from a net prediction of `target`."""
    if target == "eps":
        return pred, eps_to_x0(x_t, pred, alpha_bar)
    if target == "x0":
        return x0_to_eps(x_t, pred, alpha_bar), pred
    if target == "v":
        return v_to_eps(x_t, pred, alpha_bar), v_to_x0(x_t, pred, alpha_bar)
    raise ValueError(f"unknown prediction target {target!r}; expected one of {TARGETS}")
