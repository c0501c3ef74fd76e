"""Every refusal type crosses a process boundary whole: pickled (as Python does) and cloudpickled (as Ray does
through a handle), it comes back as the same type with the same attributes and message."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from sampling.refusal import Refusal
from sampling.request import InvalidRequest
from serving.api.auth import AuthError
from serving.api.schemas import ApiError
from serving.refusals import DeadlineImpossible, DeadlineOverloaded, Overloaded, RequestTimeout

CASES = [
    (InvalidRequest("steps", "steps must be in [1, 1000], got 0"), {"field": "steps"}),
    (Overloaded("queue full", 3), {"retry_after": 3}),
    (RequestTimeout("ran past 300 s"), {}),
    (DeadlineImpossible("no K meets 5 ms", 0.012), {"fastest_s": 0.012}),
    (DeadlineOverloaded("busy", 2), {"retry_after": 2}),
    (ApiError("body", "too large", 413), {"field": "body", "status": 413, "retry_after": None}),
    (AuthError("no key", invalid=False), {"field": "authorization", "status": 401, "challenge": "Bearer"}),
]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("exc, attrs", CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_a_refusal_round_trips_with_its_attributes(exc: Refusal, attrs: dict, dumps) -> None:
    back = pickle.loads(dumps(exc))
    assert type(back) is type(exc) and isinstance(back, Refusal)
    assert str(back) == back.message == exc.message and back.args == exc.args
    assert {k: getattr(back, k) for k in attrs} == attrs


def test_the_deadline_refusal_under_load_is_an_overload() -> None:
    """One HTTP answer for both (503 + Retry-After): the Ingress maps Overloaded, and this is one."""
    assert isinstance(DeadlineOverloaded("busy", 2), Overloaded)
    assert isinstance(InvalidRequest("x", "y"), ValueError) and isinstance(Overloaded("x", 1), RuntimeError)
