"""The base of every refusal: a request the service turns down, with a message meant for its client.

Refusals cross process boundaries: a model replica raises one and the Ingress, in another process, reads
it through a Ray handle (pickled). Exceptions pickle by calling their class again with `args`, which breaks
for any constructor whose parameters differ from what it passes up; a `Refusal` is rebuilt from its
attributes instead, whatever its subclass's constructor takes. The Ingress turns a model replica's
refusals into HTTP in `serving.api.errors.refusal`; `ApiError`, the edge's own refusal, carries its status.
"""

from __future__ import annotations

from typing import Any


class Refusal(Exception):
    """A refused request; `message` is what the client is told (also `str()` of it, with no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.message, dict(self.__dict__))


def _rebuild(cls: type[Refusal], message: str, state: dict[str, Any]) -> Refusal:
    """A refusal of type `cls` with `state` as its attributes, without calling its constructor."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc
