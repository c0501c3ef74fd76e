"""Services for the load-test tests.

`stub`: a slow stand-in over real HTTP (a uvicorn thread; cheap, one per module). The load generator against
the real application (`make serve`'s launch, behind HAProxy) is in tests/serving/test_make_serve.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.loadtests.stub_service import StubService


@pytest.fixture(scope="module")
def stub() -> Iterator[StubService]:
    service = StubService().start()
    yield service
    service.stop()
