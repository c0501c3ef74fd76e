"""Nets with one signature, forward(x, t, y) -> prediction shaped like x."""

from __future__ import annotations

import math

from torch import nn

from training.nets.dit import DiT
from training.nets.mlp import MLP

NET_KINDS = ("mlp", "dit")
_HPARAMS = {
    "mlp": {"hidden", "depth"},
    "dit": {"patch", "hidden", "depth", "heads", "mlp_ratio"},
}


def build_net(kind: str, hparams: dict, data_shape: tuple[int, ...], num_classes: int, t_scale: float) -> nn.Module:
    """Build a net from its manifest description; unknown kinds or hyperparameters are refused by name."""
    if kind not in _HPARAMS:
        raise ValueError(f"net.kind: unknown {kind!r}; expected one of {NET_KINDS}")
    extra = set(hparams) - _HPARAMS[kind]
    if extra:
        raise ValueError(f"net: unknown key(s) {sorted(extra)} for kind {kind!r}")
    if kind == "mlp":
        return MLP(math.prod(data_shape), num_classes, t_scale=t_scale, **hparams)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"dit needs square (C, H, W) images, got shape {data_shape}")
    return DiT(data_shape[1], data_shape[0], num_classes, t_scale=t_scale, **hparams)


__all__ = ["NET_KINDS", "DiT", "MLP", "build_net"]
