"""Python client of the stepserve HTTP API (it imports nothing of the service's own packages).

from stepserve_client import Client
with Client("http://127.0.0.1:8000") as c:
    x = c.sample("digits-fm", "fm-rk4", steps=8, num_samples=16, guidance=2.0, class_label=3, seed=7)
"""

from stepserve_client.client import (
    NO_RETRY,
    AsyncClient,
    Attempt,
    Client,
    RetryPolicy,
    SampleResult,
    sample_body,
)
from stepserve_client.errors import (
    BadRequest,
    NotFound,
    ServerError,
    StepserveError,
    TransportFailure,
    Unavailable,
)
from stepserve_client.stream import Progress

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "Attempt",
    "BadRequest",
    "Client",
    "NotFound",
    "Progress",
    "RetryPolicy",
    "SampleResult",
    "ServerError",
    "StepserveError",
    "TransportFailure",
    "Unavailable",
    "sample_body",
]
