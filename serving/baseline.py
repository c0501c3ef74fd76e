"""Request-level batching with Ray Serve's `@serve.batch`: the benchmark's baseline, not for serving.

Requests that arrive together form a batch that runs to completion together: the net still runs one
call per step for the whole batch, but no request joins a running batch and every request of a batch
answers when its slowest one is done (a K = 5 request batched with a K = 100 one waits for all 100
steps). `serve.batch` runs one batch at a time per replica (max_concurrent_batches = 1).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serving.app import ModelReplica


class RequestBatchedReplica(ModelReplica):
    async def sample(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._batch(req)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def _batch(self, reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(ModelReplica.sample(self, r) for r in reqs)))


RequestBatchedModelServer = serve.deployment(max_ongoing_requests=512)(RequestBatchedReplica)
