"""A model's replica inside the Ingress's own process, called the way a DeploymentHandle is.

With `single_hop` (serving.app) the Ingress replica builds each model's `ModelReplica` itself and calls it
directly: `local.sample.remote(spec)` is then a coroutine of the same answer, raising the same exceptions,
so the Ingress's code does not depend on where the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from serving.replica import ModelReplica


class LocalMethod:
    """`remote(*args)`: the replica's coroutine method, awaited by the caller as a handle's response is."""

    def __init__(self, method: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        self.remote = method


class LocalModel:
    """Handle-shaped access to a `ModelReplica` in this process: `local.sample.remote(spec)`, `local.load.remote()`."""

    def __init__(self, replica: ModelReplica) -> None:
        self.replica = replica
        self.sample = LocalMethod(replica.sample)
        self.load = LocalMethod(replica.load)


def local_models(specs: dict[str, dict[str, Any]]) -> dict[str, LocalModel]:
    """One in-process replica per model, from `ModelReplica`'s keyword arguments by model id."""
    return {name: LocalModel(ModelReplica(**kwargs)) for name, kwargs in specs.items()}
