"""The request path's fixed cost against Ray Serve's own, measured side by side in one run.

Reference applications, built here: a no-op Serve deployment behind the HTTP proxy (one hop: proxy ->
replica, which reads the body and answers a fixed, valid K = 1 response) and a no-op with two hops
(proxy -> replica -> a second deployment by handle, as the service's Ingress -> model replica). Against
them, the service serving moons-fm as shipped (two hops: Ingress, then the model replica) and with
`single_hop` (the model's engine inside the Ingress replica: one hop), the latter also with the onnxruntime
backend (`one_hop_onnxruntime`, its in-process reference on onnxruntime too). And, to tell the HTTP layer's
share from the engine's, `http_stack`: the service's own Ingress (FastAPI app, middleware, validation, the
64-sample response) in one hop with an instant model in place of the engine (`InstantModel`).

1. lone request: K = 10 fm-euler, 64 samples, one client. (served p50 - in-process p50) / the one-hop
   no-op's p50 round trip (target <= 1.3); in-process: the bare sampler in this process, no engine, requests
   back to back. Also, the same with the in-process requests paced: the thread idles between them for the
   one-hop no-op's p50 of that round (for both served variants: the two-hop one idles somewhat longer), as a
   served replica idles while its client's requests travel the path (on this machine the same net call ran
   about 1.2x slower after such idling). Also recorded: the served responses' engine time (compute) and route
   time (total; the client's latency minus it is Serve's path), and the engine time of the same request
   through a `ModelReplica` in this process (the engine without Serve).
   `http_stack`: its p50 over the one-hop no-op's (the HTTP layer's cost beyond Serve's own path).
2. tiny-request ceiling: K = 1, one sample, 16 closed-loop clients: the service's 200s per second / the
   one-hop no-op's (target >= 0.8).
3. The same, behind HAProxy in place of Serve's Python proxy (`serving.serve_cli --ingress haproxy`: HAProxy
   forwards to the Ingress replicas' own HTTP servers): HAPROXY_VARIANTS, prefixed "haproxy:", on a second
   local Ray started in a child process with that environment, up at the same time as the first and measured
   in the same rounds. Their path over the no-op behind Serve's proxy (the yardstick above, a stock Serve
   deployment) and over the one-hop no-op behind HAProxy (`over_own_ingress_noop`); the paced reference
   idles for the no-op round trip of the variant's own ingress.
4. The shipped application, "haproxy:shipped": deploy/serve.yaml as `make serve` runs it (`serving.serve_cli
   --ingress haproxy`: five models, each in an application of its own, and two Ingress replicas with the door
   at /) on a third local Ray, up before the others; POST /v1/samples (two hops: an Ingress replica, then the
   model's by handle), and as "haproxy:shipped_model_route" POST /models/moons-fm/v1/samples (one hop: the
   model's replica answers HTTP itself); lone requests only (16 clients of tiny requests would make it
   autoscale).

Windows interleave the variants (A B C A B C ...). Each ratio is taken within a round, from measurements at
most about a minute apart; the median over rounds is reported beside the per-round values. Run:
`python -m bench --only path [--quick]` (or `python -m bench.path [--quick]`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from bench.common import ROOT, deploy, load, local_serve, machine, p50_ms, scratch_checkpoint
from bench.door import start_service, stop_service
from bench.ports import free_port
from bench.serving import bare_latency_ms
from sampling.request import SampleSpec
from serving.api.ingress import Ingress
from serving.app import AppArgs, build_app, model_replicas
from serving.local import LocalMethod
from serving.replica import ModelReplica, SampleOutput
from serving.serve_cli import haproxy_environment

MODEL = "moons-fm"
LONE = {"model": MODEL, "sampler": "fm-euler", "steps": 10, "num_samples": 64}
TINY = {"model": MODEL, "sampler": "fm-euler", "steps": 1, "num_samples": 1}
CLIENTS = 16
# What the no-ops answer: a K = 1, one-sample response as the service shapes it (the client parses it).
NOOP_FIELDS = {"guidance": None, "class_label": None, "seed": 0, "nfe": 1, "shape": [1, 2], "image": None}
TIMING = {"queue_ms": 0.0, "compute_ms": 0.0, "total_ms": 0.0}
NOOP_BODY = json.dumps({**TINY, **NOOP_FIELDS, "samples": [[0.5, -0.25]], "timing": TIMING}).encode()


@serve.deployment(max_ongoing_requests=1024)
class NoopInner:
    """The second hop of the two-hop no-op: answers the fixed body."""

    async def __call__(self, body: bytes) -> bytes:
        return NOOP_BODY


@serve.deployment(max_ongoing_requests=1024)
class Noop:
    """Reads the request's body and answers the fixed body, itself (one hop) or from `inner` (two hops)."""

    def __init__(self, inner: DeploymentHandle | None = None) -> None:
        self.inner = inner

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        out = NOOP_BODY if self.inner is None else await self.inner.remote(body)
        return Response(out, media_type="application/json")


# What the instant model answers: 64 fixed 2-D samples, as long in JSON as real ones.
INSTANT_SAMPLES = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)


class InstantModel:
    """Handle-shaped stand-in for a model deployment that answers at once (`sample.remote(spec, deadline_at)`):
    the first `num_samples` of INSTANT_SAMPLES, nothing run."""

    def __init__(self) -> None:
        self.sample = LocalMethod(self._sample)

    async def _sample(self, spec: SampleSpec, deadline_at: float | None = None) -> SampleOutput:
        return SampleOutput(INSTANT_SAMPLES[: spec.num_samples], spec.steps, 0.0, 0.0, spec.sampler, spec.steps)


class _InstantIngressClass(Ingress.func_or_class):  # type: ignore[misc,name-defined]
    """The service's Ingress with every model answered by an `InstantModel`: its HTTP stack without the engine."""

    async def __init__(self, *args: Any, **kwargs: Any) -> None:
        await super().__init__(*args, **kwargs)
        self.service.handles = {name: InstantModel() for name in self.service.infos}


InstantIngress = serve.deployment(_InstantIngressClass, name="Ingress", max_ongoing_requests=1024)


def replica_compute_ms(ckpt_dir: Path, steps: int, num_samples: int, repeats: int) -> float:
    """Median engine time (the response's compute) of a lone fm-euler request through a `ModelReplica` in this
    process (torch, 1 thread, as a served replica of 1 CPU runs it): the engine without Serve around it."""

    async def main() -> list[float]:
        replica = ModelReplica(MODEL, str(ckpt_dir), backend_options={"num_threads": 1})
        times = []
        for seed in range(repeats):
            out = await replica.sample(SampleSpec("fm-euler", steps, num_samples, seed=seed))
            times.append(out.compute_s)
        await replica.engine.close()
        return times[5:]  # the first ticks refit the latency model

    return 1e3 * statistics.median(asyncio.run(main()))


def _deploy_variants(base: str, ckpt_dir: Path, onnx_dir: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The URL of each of `names`, deployed (see ROUTES)."""
    replica = {"ray_actor_options": {"num_cpus": 1}}  # as bench.serving: torch runs 1 thread
    ingress = {"ray_actor_options": {"num_cpus": 0.5}}
    args = {
        "models": {MODEL: {"path": str(ckpt_dir)}},
        "limits": {"max_num_samples": 64},
        "engine": {"max_rows_per_tick": 4096, "max_in_flight": 64, "max_queue": 1024},
        "deployment_options": {MODEL: replica, "Ingress": ingress},
    }
    one_hop = {**args, "single_hop": True, "deployment_options": {MODEL: replica}}  # the model's ModelIngress
    ort = {MODEL: {"path": str(onnx_dir), "backend": "onnxruntime", "backend_options": {"num_threads": 1}}}

    def instant() -> Any:  # the one-hop app's Ingress, its model answered by an InstantModel
        a = AppArgs.model_validate(one_hop)
        _, infos = model_replicas(a)
        security = {"auth": None, "max_headers": a.max_headers, "max_header_bytes": a.max_header_bytes}
        models = dict.fromkeys(infos)  # each replaced by an InstantModel in the replica
        return InstantIngress.options(**replica).bind(models, infos, a.max_body_bytes, a.body_timeout_s, security)

    builders = {
        "noop_one_hop": lambda: Noop.options(name="Noop", **ingress).bind(),
        "noop_two_hops": lambda: Noop.options(name="Noop", **ingress).bind(NoopInner.options(**replica).bind()),
        "two_hops": lambda: build_app(args),
        "one_hop": lambda: build_app(one_hop),
        "one_hop_onnxruntime": lambda: build_app({**one_hop, "models": ort}),
        "http_stack": instant,
    }
    return {name: deploy(builders[name](), ROUTES[name], base) for name in names}


# Every variant, by the route prefix it is deployed at.
ROUTES = {
    "noop_one_hop": "noop1",
    "noop_two_hops": "noop2",
    "two_hops": "twohop",
    "one_hop": "onehop",
    "one_hop_onnxruntime": "onehopo",
    "http_stack": "stack",
}
# The variants also deployed behind HAProxy (on a second local Ray, `--ingress haproxy`); their names there
# carry this prefix ("haproxy:one_hop").
HAPROXY_VARIANTS = ("noop_one_hop", "two_hops", "one_hop")
HAPROXY = "haproxy:"
# The shipped application: deploy/serve.yaml through `serving.serve_cli` behind HAProxy, as `make serve` runs
# it, on a local Ray of its own: its body-routed path at / and moons-fm's own route.
SHIPPED = HAPROXY + "shipped"
SHIPPED_MODEL_ROUTE = HAPROXY + "shipped_model_route"
# The served variants measured against an in-process reference, and the backend of that reference.
BARE_BACKEND = {
    "two_hops": "torch",
    "one_hop": "torch",
    "one_hop_onnxruntime": "onnxruntime",
    "shipped": "torch",
    "shipped_model_route": "torch",
}
# The variants of the tiny-request ceiling (the onnxruntime and instant variants are for the lone request).
TINY_VARIANTS = ("noop_one_hop", "noop_two_hops", "two_hops", "one_hop")
# The line on which the HAProxy host (`--host-haproxy`) reports its variants' URLs.
URLS_MARK = "stepserve-bench-urls "


def kind(variant: str) -> str:
    """What a variant is, whichever ingress it is behind: "haproxy:one_hop" -> "one_hop"."""
    return variant.removeprefix(HAPROXY)


def own_noop(variant: str) -> str:
    """The one-hop no-op behind the same ingress as `variant`."""
    return (HAPROXY if variant.startswith(HAPROXY) else "") + "noop_one_hop"


def host_haproxy() -> int:
    """The HAProxy side of a run (a child process, HAProxy environment set): a local Ray whose HTTP ingress is
    HAProxy, HAPROXY_VARIANTS deployed on it, their URLs printed on one line after URLS_MARK; it then holds
    them until its standard input closes, and shuts that Ray down."""
    ckpt_dir = ROOT / "models" / MODEL
    with local_serve() as base:
        urls = _deploy_variants(base, ckpt_dir, ckpt_dir, HAPROXY_VARIANTS)
        print(URLS_MARK + json.dumps(urls), flush=True)
        sys.stdin.read()
    return 0


@contextlib.contextmanager
def haproxy_side() -> Iterator[subprocess.Popen]:
    """A child process started with the HAProxy environment (Ray's processes read it when they start, so it
    needs a Ray of its own) running `host_haproxy`; stopped on exit. `haproxy_urls` reads its URLs."""
    cmd = [sys.executable, "-m", "bench.path", "--host-haproxy"]
    # HAProxy's stats page and metrics on free ports (Ray's defaults 8404 and 9101 may be taken, e.g. by a
    # `serve_cli --ingress haproxy` running on this machine)
    ports = {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    env = haproxy_environment({**os.environ, **ports})
    # a session of its own: if it does not stop, its whole process group (its Ray, HAProxy) is killed
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield proc
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def haproxy_urls(proc: subprocess.Popen) -> dict[str, str]:
    """The URLs the HAProxy host reports, by variant name with the HAPROXY prefix; its other output passes
    through to stderr."""
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith(URLS_MARK):
            return {HAPROXY + v: url for v, url in json.loads(line[len(URLS_MARK) :]).items()}
        sys.stderr.write(line)
    raise RuntimeError(f"the HAProxy side of the benchmark exited (code {proc.wait()}) before its variants were up")


def measure(quick: bool) -> dict[str, Any]:
    """Both measurements, every variant on a fresh local Ray behind Serve's proxy and HAPROXY_VARIANTS on a
    second one behind HAProxy, both up at once and measured in the same rounds."""
    ckpt_dir = ROOT / "models" / MODEL
    window = 3.0 if quick else 6.0
    rounds = 3 if quick else 5
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "model": MODEL, "clients": CLIENTS}
    # The shipped application first, then the HAProxy side, each alone: started while another deployed, on 2
    # cores, a proxy actor once stopped answering health checks during HAProxy's reloads.
    shipped, shipped_url = start_service(ROOT / "deploy" / "serve.yaml", "haproxy")
    try:
        with tempfile.TemporaryDirectory() as scratch, haproxy_side() as side:
            far = haproxy_urls(side)
            with local_serve() as base:
                onnx_dir = scratch_checkpoint(MODEL, Path(scratch), onnx=True)
                urls = {**_deploy_variants(base, ckpt_dir, onnx_dir, tuple(ROUTES)), **far, SHIPPED: shipped_url}
                urls[SHIPPED_MODEL_ROUTE] = f"{shipped_url}/models/{MODEL}"
                result.update(_rounds(urls, ckpt_dir, onnx_dir, window, rounds))
    finally:
        stop_service(shipped)
    return result


def _rounds(urls: dict[str, str], ckpt_dir: Path, onnx_dir: Path, window: float, rounds: int) -> dict[str, Any]:
    """The measurements' rounds over the deployed variants `urls`; the "lone" and "tiny" parts of the result."""
    result: dict[str, Any] = {}
    for url in urls.values():  # warm-up: first requests after a deployment are slower
        load(url, [TINY], 4, 1.0)
    lone: dict[str, list[float]] = {v: [] for v in urls}
    # where a served lone request's time goes, from the response's timing: inside the engine (compute)
    # and inside the ingress route (total); the client's latency minus total is Serve's path
    served = {v: BARE_BACKEND[kind(v)] for v in urls if kind(v) in BARE_BACKEND}
    inside: dict[str, list[dict[str, float]]] = {v: [] for v in [*served, "http_stack"]}
    tiny_variants = [v for v in urls if kind(v) in TINY_VARIANTS]
    tiny: dict[str, list[float]] = {v: [] for v in tiny_variants}
    bare: dict[str, list[float]] = {k: [] for k in set(served.values())}
    # paced[noop][backend]: the bare sampler idling between requests for that no-op's round trip, for the
    # backends of the variants behind that no-op's ingress
    paced: dict[str, dict[str, list[float]]] = {}
    for v, backend in served.items():
        paced.setdefault(own_noop(v), {})[backend] = []
    in_replica = []
    for _ in range(rounds):
        for v, url in urls.items():
            steps = 1 if kind(v).startswith("noop") else 10
            records = load(url, [TINY if steps == 1 else LONE], 1, window)["records"]
            lone[v].append(p50_ms(records, steps))
            if v in inside:
                timed = [r for r in records if r.ok and r.server_compute_s is not None]
                inside[v].append(
                    {
                        "compute_ms": 1e3 * statistics.median(r.server_compute_s for r in timed),
                        "route_total_ms": 1e3 * statistics.median(r.server_total_s for r in timed),
                    }
                )
        for backend in bare:
            ckpt = onnx_dir if backend == "onnxruntime" else ckpt_dir
            bare[backend].append(bare_latency_ms(ckpt, 10, 64, repeats=50, backend_kind=backend))
            for noop, refs in paced.items():
                if backend in refs:
                    gap_s = lone[noop][-1] / 1e3
                    refs[backend].append(bare_latency_ms(ckpt, 10, 64, repeats=50, gap_s=gap_s, backend_kind=backend))
        in_replica.append(replica_compute_ms(ckpt_dir, 10, 64, repeats=50))
        for v in tiny_variants:
            tiny[v].append(load(urls[v], [TINY], CLIENTS, window)["requests_per_s"])
    # Ratios pair the variants of one round (measured within about a minute of each other), then take the median
    # over rounds: the machine's speed drifts between rounds by more than the effects measured here.
    noop = lone["noop_one_hop"]  # the no-op behind Serve's own proxy: every variant's yardstick

    def path_ms(v: str, ref: dict[str, list[float]]) -> list[float]:
        return [lone[v][i] - ref[served[v]][i] for i in range(rounds)]

    def per(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b, strict=True)]

    over_bare = {v: per(path_ms(v, bare), noop) for v in served}
    over_paced = {v: per(path_ms(v, paced[own_noop(v)]), noop) for v in served}
    own_paced = {v: per(path_ms(v, paced[own_noop(v)]), lone[own_noop(v)]) for v in served if v.startswith(HAPROXY)}
    stack = per(lone["http_stack"], noop)
    ceil = {v: per(tiny[v], tiny["noop_one_hop"]) for v in tiny_variants}
    own_ceil = {v: per(tiny[v], tiny[own_noop(v)]) for v in tiny_variants if v.startswith(HAPROXY)}

    def med(ratios: dict[str, list[float]]) -> dict[str, float]:
        return {v: statistics.median(x) for v, x in ratios.items()}

    result["lone"] = {
        "request": LONE,
        "p50_ms": lone,
        "bare_p50_ms": bare,
        "inside_p50_ms": inside,
        "replica_in_process_compute_p50_ms": in_replica,
        "overhead_over_one_hop_noop_per_round": over_bare,
        "overhead_over_one_hop_noop": med(over_bare),
        "bare_paced_p50_ms": paced,
        "overhead_over_one_hop_noop_paced_per_round": over_paced,
        "overhead_over_one_hop_noop_paced": med(over_paced),
        "overhead_over_own_ingress_noop_paced_per_round": own_paced,
        "overhead_over_own_ingress_noop_paced": med(own_paced),
        "http_stack_over_one_hop_noop_per_round": stack,
        "http_stack_over_one_hop_noop": statistics.median(stack),
    }
    result["tiny"] = {
        "request": TINY,
        "requests_per_s": tiny,
        "over_one_hop_noop_per_round": ceil,
        "over_one_hop_noop": med(ceil),
        "over_own_ingress_noop_per_round": own_ceil,
        "over_own_ingress_noop": med(own_ceil),
    }
    return result


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """`measure`; writes out_dir/path.json and returns the same dict."""
    result = measure(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "path.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.path", description="the request path against no-op Serve apps")
    p.add_argument("--out", default="bench-results", help="directory for path.json")
    p.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds")
    p.add_argument("--host-haproxy", action="store_true", help=argparse.SUPPRESS)  # the run's HAProxy side
    args = p.parse_args(argv)
    if args.host_haproxy:
        return host_haproxy()
    res = run(Path(args.out), args.quick)
    lone, tiny = res["lone"], res["tiny"]
    summary = {
        "lone": lone["overhead_over_one_hop_noop"],
        "lone_paced": lone["overhead_over_one_hop_noop_paced"],
        "lone_paced_over_own_ingress_noop": lone["overhead_over_own_ingress_noop_paced"],
        "http_stack": lone["http_stack_over_one_hop_noop"],
        "tiny": tiny["over_one_hop_noop"],
        "tiny_over_own_ingress_noop": tiny["over_own_ingress_noop"],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
