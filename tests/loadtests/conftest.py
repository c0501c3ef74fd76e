"""A slow stand-in service over real HTTP, one per test module (it is cheap: a uvicorn thread)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.loadtests.stub_service import StubService


@pytest.fixture(scope="module")
def stub() -> Iterator[StubService]:
    service = StubService().start()
    yield service
    service.stop()
