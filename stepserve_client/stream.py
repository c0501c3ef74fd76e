"""Streamed requests (`stream: true`): the server-sent events of POST /v1/samples, parsed.

The service sends `progress` events (step, steps, evaluations, nfe, and every `preview_every` steps a
`preview` of the data estimate), then one `result` event holding the unstreamed response body, or an `error`
event holding the API's error body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stepserve_client.errors import StepserveError, error_from_body


@dataclass(frozen=True)
class Progress:
    """One net evaluation done: step `step` of `steps`; evaluations and nfe so far (nfe x2 when guided);
    preview: the data estimate (num_samples, *data shape) float32 in data space, or None."""

    step: int
    steps: int
    evaluations: int
    nfe: int
    preview: np.ndarray | None = None

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> Progress:
        preview = data.get("preview")
        return cls(
            step=int(data["step"]),
            steps=int(data["steps"]),
            evaluations=int(data["evaluations"]),
            nfe=int(data["nfe"]),
            preview=None if preview is None else np.asarray(preview, np.float32),
        )


class EventParser:
    """Server-sent events from text lines: feed lines, get (event, data) pairs at each blank line."""

    def __init__(self) -> None:
        self.event, self.data = "message", []

    def feed(self, lines: Iterable[str]) -> list[tuple[str, str]]:
        out = []
        for line in lines:
            if not line:
                if self.data:
                    out.append((self.event, "\n".join(self.data)))
                self.event, self.data = "message", []
            elif line.startswith("event:"):
                self.event = line[6:].strip()
            elif line.startswith("data:"):
                self.data.append(line[5:].removeprefix(" "))
        return out


def decode(event: str, data: str) -> Progress | dict[str, Any]:
    """A `progress` event as Progress, a `result` event as the response body; an `error` event raises the
    typed error of its body."""
    body = json.loads(data)
    if event == "progress":
        return Progress.from_event(body)
    if event == "result":
        return body
    if event == "error":
        status = body.get("error", {}).get("status", 500) if isinstance(body, dict) else 500
        raise error_from_body(body, int(status), data[:500])
    raise StepserveError(f"unexpected event {event!r} in the stream")
