"""The Ray Serve application, built from a Serve config file (`deploy/serve.yaml`).

`import_path: serving.app:build_app`; its `args` (validated by `AppArgs`) name the models, their backends,
request limits and engine bounds; the config's `deployments` section sets replicas, resources, autoscaling
and max_ongoing_requests. Deployments: `Ingress` (serving.api.ingress) and one `ModelServer`
(serving.replica) per model id, but for a model whose `application` names another application, whose
replicas the Ingress calls instead. A one-model `single_hop` application is that model's `ModelIngress`
alone, named after the model: its own HTTP edge (one hop) and the replica such an `application` names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from sampling.request import Limits
from serving.api.auth import AuthArgs
from serving.api.headers import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from serving.api.ingress import Ingress, ModelIngress
from serving.api.middleware import BUSY_MIN_ACTIVE
from serving.api.schemas import model_info
from serving.engine import EngineLimits
from serving.replica import ModelServer
from training.checkpoint import has_torch_weights, read_manifest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ModelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None  # checkpoint dir; default <models_dir>/<model id>
    backend: str = "torch"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)  # overrides of the app-wide limits
    engine: dict[str, Any] = Field(default_factory=dict)  # overrides of the app-wide engine options
    # Served by another application of the same Serve instance: a one-model `single_hop` application, whose
    # replicas answer this application's handle calls (no model deployment here; `engine` and `backend` are
    # that application's). The checkpoint and `limits` here must be its too: requests are validated here.
    application: str | None = None


class AppArgs(BaseModel):
    """The `args` of the application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")
    models_dir: str = "models"  # relative paths resolve against the project root
    models: dict[str, ModelArgs]
    # Model families: a name -> served models of the same data (a teacher and its distilled students). A
    # steps-"auto" request to the name runs on the member whose quality profile and load promise the most.
    families: dict[str, list[str]] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)
    max_body_bytes: int = 64 * 1024
    body_timeout_s: float = 10.0  # a request body must arrive within this (else 408)
    # Security at the HTTP edge (docs/security.md): optional API keys with per-key limits, header caps (431).
    auth: AuthArgs | None = None
    max_headers: int = Field(DEFAULT_MAX_HEADERS, ge=8)
    max_header_bytes: int = Field(DEFAULT_MAX_HEADER_BYTES, ge=1024)
    # One hop instead of two: each model's engine runs inside the Ingress replicas (no model deployments), so
    # the Ingress deployment's options (replicas, autoscaling, num_cpus) are the models'. With one model the
    # application's one deployment is that model's `ModelIngress`, named after it, which another application
    # may call (`application` above); see docs/architecture.md ("The request path").
    single_hop: bool = False
    # Shed at the door (serving.api.door): the Ingress refuses what the model replicas' load snapshots say
    # their engines would refuse, without calling them. Off: every request reaches an engine to be refused.
    shed_at_door: bool = True
    # Shed while busy (serving.api.door.LoopLag): an Ingress replica whose event loop has run this many ms
    # late on each of its last probes refuses new sampling requests unread (503 + Retry-After); 0: never.
    max_loop_lag_ms: float = Field(50.0, ge=0.0)
    # ... and only while it holds at least this many sampling requests in progress (modest load on shared
    # cores makes a loop late too; serving.api.middleware.BUSY_MIN_ACTIVE).
    busy_min_active: int = Field(BUSY_MIN_ACTIVE, ge=0)
    # Deployment options by deployment name, for applications built in code (tests, benchmarks); in a
    # Serve config file use its `deployments` section instead, which takes precedence over these.
    deployment_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


def resolve(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else PROJECT_ROOT / p)


def model_replicas(a: AppArgs) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each model's `ModelReplica` keyword arguments and its metadata (checked against the engine)."""
    replicas, infos = {}, {}
    for name, m in a.models.items():
        options = {**a.engine, **m.engine}
        try:
            engine = EngineLimits.from_options(**options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model {name}: {e}") from None
        path = resolve(m.path or str(Path(a.models_dir) / name))
        limits = Limits(**{**a.limits, **m.limits})
        if 2 * limits.max_num_samples > engine.max_rows_per_tick:
            raise ValueError(
                f"model {name}: 2 x max_num_samples ({2 * limits.max_num_samples}) must fit "
                f"engine.max_rows_per_tick ({engine.max_rows_per_tick}) so a guided request fits one tick"
            )
        if m.backend == "torch" and not has_torch_weights(read_manifest(path)):
            raise ValueError(
                f"model {name}: backend 'torch' needs torch weights, and {path} has none (a net imported as "
                "ONNX); use backend 'onnxruntime'"
            )
        infos[name] = dataclasses.asdict(model_info(name, path, m.backend, limits))
        replicas[name] = {
            "name": name,
            "path": path,
            "backend": m.backend,
            "backend_options": m.backend_options,
            "engine": options,
        }
    return replicas, infos


def check_families(families: dict[str, list[str]], infos: dict[str, dict[str, Any]]) -> None:
    """A family's name is not a model's, it has two or more served members, all of the same data (kind, shape,
    classes), and those with quality profiles are profiled by the same metric; ValueError naming what is not.
    A member without a profile is served but never chosen (steps "auto" chooses by the profiles)."""
    for name, members in families.items():
        where = f"families.{name}"
        if name in infos:
            raise ValueError(f"{where}: {name!r} is already a model id; a family needs a name of its own")
        if len(members) < 2 or len(set(members)) != len(members):
            raise ValueError(f"{where}: needs two or more distinct members, got {members}")
        unknown = [m for m in members if m not in infos]
        if unknown:
            raise ValueError(f"{where}: {unknown} not among the served models {sorted(infos)}")
        first = infos[members[0]]
        for m in members[1:]:
            for key in ("data_kind", "output_shape", "num_classes"):
                if infos[m][key] != first[key]:
                    raise ValueError(f"{where}: {m} has {key} {infos[m][key]}, {members[0]} {first[key]}")
        metrics = {infos[m]["quality_profile"]["metric"] for m in members if infos[m]["quality_profile"] is not None}
        if len(metrics) > 1:
            raise ValueError(f"{where}: its members are profiled by different metrics {sorted(metrics)}")


def model_deployments(
    a: AppArgs, server: serve.Deployment = ModelServer
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One bound `server` deployment per model served here (not by another `application`), and each model's
    metadata (checked against the engine)."""
    replicas, infos = model_replicas(a)
    handles = {
        name: server.options(name=name, **a.deployment_options.get(name, {})).bind(**kwargs)
        for name, kwargs in replicas.items()
        if a.models[name].application is None
    }
    return handles, infos


def assemble(args: dict[str, Any], server: serve.Deployment = ModelServer) -> serve.Application:
    """The Ingress bound to one `server` deployment per model, from a Serve config's `args` (see AppArgs); for a
    one-model `single_hop` application, that model's `ModelIngress`."""
    a = AppArgs.model_validate(args)
    elsewhere = {name: m.application for name, m in a.models.items() if m.application is not None}
    if elsewhere and a.single_hop:
        raise ValueError(f"models {sorted(elsewhere)}: `application` needs two hops (single_hop is set)")
    if a.single_hop:
        local, infos = model_replicas(a)
        handles: dict[str, Any] = {}
    else:
        local = None
        handles, infos = model_deployments(a, server)
    check_families(a.families, infos)
    auth = a.auth.model_copy(update={"keys_file": resolve(a.auth.keys_file)}) if a.auth and a.auth.keys_file else a.auth
    security = {
        "auth": auth.model_dump() if auth else None,
        "max_headers": a.max_headers,
        "max_header_bytes": a.max_header_bytes,
    }
    door = (a.shed_at_door, a.max_loop_lag_ms, a.busy_min_active)
    if local is not None and len(local) == 1:
        [(name, replica)] = local.items()
        model = ModelIngress.options(name=name, **a.deployment_options.get(name, {}))
        return model.bind(replica, infos[name], a.max_body_bytes, a.body_timeout_s, security, *door)
    ingress = Ingress.options(name="Ingress", **a.deployment_options.get("Ingress", {}))
    edge = (a.max_body_bytes, a.body_timeout_s, security, local, *door, a.families, elsewhere)
    return ingress.bind(handles, infos, *edge)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application from a Serve config's `args` (Serve calls builders with exactly one argument)."""
    return assemble(args)


__all__ = ["AppArgs", "assemble", "build_app", "model_deployments"]
