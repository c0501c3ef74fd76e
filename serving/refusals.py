"""What a model replica refuses a request with: the engine's admission and time limit, and the step budget's
deadline. Each is a `sampling.refusal.Refusal` (pickle-safe across a Ray handle); the Ingress words each
one as HTTP in `serving.api.errors.refusal`."""

from __future__ import annotations

from sampling.refusal import Refusal


class Overloaded(Refusal, RuntimeError):
    """The engine is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(Refusal, RuntimeError):
    """A request ran past the engine's request_timeout_s and was dropped."""


class DeadlineImpossible(Refusal, ValueError):
    """No candidate meets the deadline even on an idle replica; `fastest_s` is the quickest one alone."""

    def __init__(self, message: str, fastest_s: float) -> None:
        super().__init__(message)
        self.fastest_s = fastest_s


class DeadlineOverloaded(Overloaded):
    """No candidate meets the deadline under the current load; retry after `retry_after` seconds."""
