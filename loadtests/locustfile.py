"""Locust load for stepserve: the same requests as `python -m loadtests`, configured by environment.

    pip install -e '.[locust]'
    STEPSERVE_MODEL=moons-fm STEPSERVE_SAMPLER=fm-euler STEPSERVE_STEPS=20 \\
        locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Environment (defaults in brackets): STEPSERVE_MODEL [moons-fm], STEPSERVE_SAMPLER [fm-euler],
STEPSERVE_STEPS, the step budget K [20], STEPSERVE_NUM_SAMPLES [1], STEPSERVE_GUIDANCE [none],
STEPSERVE_CLASS_LABEL: an integer, `cycle` (request i asks for class i mod C on class-conditional
models; the default) or `none`, STEPSERVE_SEED [0]. Each simulated user sends back to back (closed
loop, like --concurrency); requests are named `/v1/samples K=<K>` in Locust's statistics, and every
non-200 answer counts as a failure carrying the service's error message.
"""

from __future__ import annotations

import itertools
import os

from locust import HttpUser, constant, task

from loadtests.client import RequestSpec

MODEL = os.environ.get("STEPSERVE_MODEL", "moons-fm")
SAMPLER = os.environ.get("STEPSERVE_SAMPLER", "fm-euler")
STEPS = int(os.environ.get("STEPSERVE_STEPS", "20"))
NUM_SAMPLES = int(os.environ.get("STEPSERVE_NUM_SAMPLES", "1"))
GUIDANCE = float(os.environ["STEPSERVE_GUIDANCE"]) if os.environ.get("STEPSERVE_GUIDANCE") else None
CLASS_LABEL = os.environ.get("STEPSERVE_CLASS_LABEL", "cycle")
SEED = int(os.environ.get("STEPSERVE_SEED", "0"))

# One counter across all users of this process, so request i gets seed SEED + i as in the CLI.
_counter = itertools.count()


class StepserveUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        info = self.client.get(f"/v1/models/{MODEL}", name="/v1/models/{id}").json()
        classes = int(info.get("num_classes", 0))
        if classes == 0 or CLASS_LABEL == "none":
            labels = None
        elif CLASS_LABEL == "cycle":
            labels = tuple(range(classes))
        else:
            labels = (int(CLASS_LABEL),)
        self.spec = RequestSpec(MODEL, SAMPLER, STEPS, NUM_SAMPLES, GUIDANCE, labels, SEED)

    @task
    def sample(self) -> None:
        body = self.spec.payload(next(_counter))
        with self.client.post("/v1/samples", json=body, name=f"/v1/samples K={STEPS}", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
