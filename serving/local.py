"""A model's replica inside the Ingress's own process, called the way a DeploymentHandle is.

With `single_hop` (serving.app) the Ingress replica builds each model's `ModelReplica` itself and calls it
directly: `local.sample.remote(spec)` is then a coroutine of the same answer, raising the same exceptions,
so the Ingress's code does not depend on where the model runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from serving.replica import ModelReplica


class LocalMethod:
    """`remote(*args)`: the replica's coroutine method, awaited by the caller as a handle's response is."""

    def __init__(self, method: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        self.remote = method


class LocalStream:
    """A streamed call's events, shaped as Serve's DeploymentResponseGenerator: `__anext__()` and `cancel()`."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self.events = events

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> Any:
        return await self.events.__anext__()

    def cancel(self) -> None:
        """Close the replica's generator (its cleanup drops the request from the engine)."""
        asyncio.ensure_future(self.events.aclose())


class LocalModel:
    """Handle-shaped access to a `ModelReplica` in this process: `local.sample.remote(spec, deadline_at)`,
    `local.sample_auto.remote(...)`, `local.load.remote()`, and `local.options(stream=True).sample_stream.remote(
    spec, preview_every)` for a `LocalStream`."""

    def __init__(self, replica: ModelReplica) -> None:
        self.replica = replica
        self.sample = LocalMethod(replica.sample)
        self.sample_auto = LocalMethod(replica.sample_auto)
        self.load = LocalMethod(replica.load)
        self.sample_stream = LocalMethod(lambda *args: LocalStream(replica.sample_stream(*args)))

    def options(self, **_: Any) -> LocalModel:
        """Handle options mean nothing in-process (a stream is always a `LocalStream`)."""
        return self


def local_models(specs: dict[str, dict[str, Any]]) -> dict[str, LocalModel]:
    """One in-process replica per model, from `ModelReplica`'s keyword arguments by model id."""
    return {name: LocalModel(ModelReplica(**kwargs)) for name, kwargs in specs.items()}
