"""Request-level batching with Ray Serve's `@serve.batch`: the serving benchmark's baseline, built as its own
application (the product serves step-level batching only).

Requests that arrive together form a batch that runs to completion together: the net still runs one call
per step for the whole batch, but no request joins a running batch and every request of a batch answers
when its slowest one is done (a K = 5 request batched with a K = 100 one waits for all 100 steps).
`serve.batch` runs one batch at a time per replica (max_concurrent_batches = 1).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from sampling.request import SampleSpec
from serving.app import assemble
from serving.replica import ModelReplica, SampleOutput


class RequestBatchedReplica(ModelReplica):
    async def sample(self, spec: SampleSpec, deadline_at: float | None = None) -> SampleOutput:
        """Request-level batching knows no deadlines: `deadline_at` is ignored (the response still says
        whether the deadline was met)."""
        return await self._batch(spec)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def _batch(self, specs: list[SampleSpec]) -> list[SampleOutput]:
        return list(await asyncio.gather(*(ModelReplica.sample(self, s) for s in specs)))


RequestBatchedModelServer = serve.deployment(max_ongoing_requests=512)(RequestBatchedReplica)


def build_request_batched_app(args: dict[str, Any]) -> serve.Application:
    """The product's application with every model replica batching by request instead of by step."""
    return assemble(args, RequestBatchedModelServer)
