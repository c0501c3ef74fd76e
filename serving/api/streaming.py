"""A streamed request's answer as server-sent events: `progress` events as the sampler runs, then `result`
(the response body) or `error` (the API's error body)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serving.api.errors import REFUSALS, internal_error, refusal
from serving.replica import SampleOutput


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; the JSON is compact, so it holds no newline."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def progress_json(event: dict[str, Any]) -> dict[str, Any]:
    """A replica's progress dict as JSON data (the preview array as nested lists)."""
    return {**event, "preview": event["preview"].tolist()} if "preview" in event else event


async def sse_events(
    model: str, events: Any, first: Any, respond: Callable[[SampleOutput], Awaitable[dict[str, Any]]]
) -> AsyncIterator[str]:
    """The replica's stream `events` (its first item `first` already received: lists of progress dicts, then
    the `SampleOutput`) as SSE, the output answered by `respond`. Leaving early (the client went away) cancels
    the replica's call, which drops the request from the engine."""
    finished = False
    item = first
    try:
        while not isinstance(item, SampleOutput):
            # One SSE event per progress dict; the replica sends them in batches (lists).
            yield "".join(sse("progress", progress_json(p)) for p in item)
            item = await events.__anext__()
        finished = True
        yield sse("result", await respond(item))
    except REFUSALS as e:
        finished = True
        yield sse("error", refusal(model, e).to_json())
    except Exception as e:  # the stream has begun: the error goes in it, in the API's shape
        finished = True
        yield sse("error", internal_error(e))
    finally:
        if not finished:
            events.cancel()
